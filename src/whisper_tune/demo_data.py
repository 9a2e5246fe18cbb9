"""The demo corpus: our own Marathi sentences, spoken by espeak-ng, in Common Voice layout.

``assets/demo_sentences_mr.txt`` holds 1,650 sentences written for this project (250 by
hand, the rest composed from grammatical templates by ``scripts/compose_demo_sentences.py``;
CC0). :func:`make_demo_data` speaks them with espeak-ng (a different voice variant, speed
and pitch per clip), resamples to 48 kHz and writes MP3 clips plus ``train.tsv``,
``dev.tsv``, ``test.tsv`` and ``validated.tsv`` exactly as a Common Voice release does, so
the demo and the tests go through the real Common Voice loader and MP3 decoder. Each
sentence is in one split only, and each training sentence is spoken once by default.

The splits (:func:`split_sentences`) measure different things:

- ``test``: sentences drawn at random from the same pool as training, in training voices.
- ``unseen``: sentences chosen by their rarest word: a word is held out with every sentence
  that holds it, rarest words first, so no unseen sentence's rarest word occurs in
  training. They are spoken by voice variants, speeds and pitches that no training, dev or
  test clip uses (:data:`UNSEEN_VOICES`, :data:`UNSEEN_SPEEDS`, :data:`UNSEEN_PITCHES`).
- ``dev``: chosen the same way as ``unseen`` (other words), in training voices: the split
  to stop early and pick the best adapter on, so the test and unseen scores stay clean.
- ``unseen-voices``: the test sentences once more, in the unseen voices (the old
  ``unseen`` split): a fine-tune that learned its training voices rather than the language
  shows it there.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .audio import resample
from .errors import UserError

log = logging.getLogger(__name__)

CV_SAMPLE_RATE = 48000  # Common Voice distributes 48 kHz MP3
VOICES = ("m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3")  # espeak-ng variants of train/dev/test
SPEED_RANGE = (135, 175)  # words per minute
PITCH_RANGE = (35, 70)  # espeak-ng pitch, 0-99
UNSEEN_VOICES = ("m5", "m6", "f4", "f5")  # the unseen splits' variants: never in train, dev or test
UNSEEN_SPEEDS = ((115, 130), (180, 195))  # outside SPEED_RANGE, slower and faster
UNSEEN_PITCHES = ((20, 32), (73, 85))  # outside PITCH_RANGE, lower and higher
SPLITS = ("train", "dev", "test", "unseen", "unseen-voices")
UNSEEN_SPLITS = ("unseen", "unseen-voices")  # spoken in the unseen voices; not in validated.tsv
CORPUS_LAYOUT = 3  # bumped when sentences, voices or splits change, so an older corpus is made again
_WORD = re.compile(r"[\u0900-\u0963\u0966-\u097f]+")  # a run of Devanagari, without the dandas
CV_COLUMNS = (
    "client_id",
    "path",
    "sentence_id",
    "sentence",
    "sentence_domain",
    "up_votes",
    "down_votes",
    "age",
    "gender",
    "accents",
    "variant",
    "locale",
    "segment",
)


@dataclass(frozen=True)
class DemoDataOptions:
    """How the demo corpus is drawn; the defaults speak every sentence once (1,732 clips)."""

    sentences: int | None = None  # use only the first N sentences (None: all; tests use a few)
    train_repeats: int = 1  # each training sentence is spoken this many times, by different voices
    dev_fraction: float = 0.05  # unseen-style sentences for early stopping
    test_fraction: float = 0.05  # random held-out sentences, training voices
    unseen_fraction: float = 0.05  # sentences whose rarest words training never has, unseen voices
    seed: int = 0


@dataclass(frozen=True)
class DemoDataResult:
    folder: Path  # the <lang>/ folder holding the TSVs and clips/
    clips: dict[str, int]  # split -> clip count
    reused: bool = False


def demo_sentences(language: str = "mr") -> list[str]:
    """The project's demo sentences for ``language``: Marathi (the demo corpus) and English
    (the demo's replay corpus, ``data.replay``: scripts/compose_replay_sentences_en.py)."""
    name = f"demo_sentences_{language}.txt"
    path = resources.files("whisper_tune") / "assets" / name
    if not path.is_file():
        raise UserError(f"no demo sentences for language {language!r}: whisper-tune ships 'mr' and 'en'")
    lines = (s.strip() for s in path.read_text(encoding="utf-8").splitlines())
    return [s for s in lines if s and not s.startswith("#")]


def words(sentence: str) -> list[str]:
    """The sentence's words: runs of Devanagari, punctuation dropped."""
    return _WORD.findall(sentence)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, language: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Synthesize ``text`` with espeak-ng; returns mono float32 samples and their rate."""
    import soundfile as sf

    if not espeak_available():
        raise UserError("espeak-ng is not installed: run 'apt-get install espeak-ng' (the README's setup does)")
    cmd = ["espeak-ng", "-v", f"{language}+{voice}", "-s", str(speed), "-p", str(pitch), "--stdout", text]
    run = subprocess.run(cmd, capture_output=True, check=False)
    if run.returncode != 0 or not run.stdout:
        raise RuntimeError(f"espeak-ng failed on {text!r}: {run.stderr.decode(errors='replace')}")
    samples, sr = sf.read(io.BytesIO(run.stdout), dtype="float32")
    return samples, sr


def split_sentences(sentences: list[str], opts: DemoDataOptions) -> dict[str, list[str]]:
    """Sentence lists of train, dev, test and unseen (``unseen-voices`` reuses test).

    ``unseen`` then ``dev`` are filled by holding out words, rarest first (seeded order
    among equals): a word is held out only with every sentence that holds it, and only if
    they all fit, so training never sees it. ``test`` is a random draw of the rest."""
    n = {
        k: max(1, round(len(sentences) * f))
        for k, f in (("unseen", opts.unseen_fraction), ("dev", opts.dev_fraction), ("test", opts.test_fraction))
    }
    if len(sentences) < sum(n.values()) + 1:
        raise UserError(
            f"{len(sentences)} sentences are too few for the demo splits: use at least {sum(n.values()) + 1}"
        )
    rng = random.Random(opts.seed)
    holders: dict[str, list[str]] = {}
    for s in sentences:
        for w in dict.fromkeys(words(s)):
            holders.setdefault(w, []).append(s)
    order = sorted(holders, key=lambda w: (len(holders[w]), rng.random()))
    taken: dict[str, str] = {}
    for split in ("unseen", "dev"):
        chosen: list[str] = []
        for w in order:
            group = [s for s in holders[w] if s not in taken]
            if len(chosen) + len(group) > n[split]:
                continue
            chosen += group
            taken.update(dict.fromkeys(group, split))
            if len(chosen) == n[split]:
                break
        rest = [s for s in sentences if s not in taken]  # too few rare words (tiny corpora): fill at random
        extra = rng.sample(rest, n[split] - len(chosen))
        taken.update(dict.fromkeys(extra, split))
    rest = [s for s in sentences if s not in taken]
    test = set(rng.sample(rest, n["test"]))
    out = {k: [s for s in sentences if taken.get(s) == k] for k in ("unseen", "dev")}
    return {"train": [s for s in rest if s not in test], "test": [s for s in rest if s in test]} | out


def new_words(splits: dict[str, list[str]]) -> dict[str, float]:
    """Per held-out split, the share of its words (tokens) that no training sentence has."""
    trained = {w for s in splits["train"] for w in words(s)}
    shares = {}
    for split, sentences in splits.items():
        tokens = [w for s in sentences for w in words(s)]
        if split != "train" and tokens:
            shares[split] = round(sum(w not in trained for w in tokens) / len(tokens), 3)
    return shares


def _voice(rng: random.Random, split: str, voices: list[str]) -> dict:
    """Voice settings of one clip: the unseen split draws from outside the training ranges."""
    if split in UNSEEN_SPLITS:
        speed, pitch = rng.randint(*rng.choice(UNSEEN_SPEEDS)), rng.randint(*rng.choice(UNSEEN_PITCHES))
    else:
        speed, pitch = rng.randint(*SPEED_RANGE), rng.randint(*PITCH_RANGE)
    return {"voice": voices.pop(), "speed": speed, "pitch": pitch}


def _plan(sentences: dict[str, list[str]], opts: DemoDataOptions, language: str) -> list[dict]:
    """One record per clip, with its voice settings drawn from a seeded generator."""
    rng = random.Random(opts.seed + 1)
    ids = {s: i for i, s in enumerate(sorted({s for ss in sentences.values() for s in ss}))}
    plan = []
    for split in SPLITS:
        repeats = opts.train_repeats if split == "train" else 1
        pool = UNSEEN_VOICES if split in UNSEEN_SPLITS else VOICES
        for sentence in sentences["test" if split == "unseen-voices" else split]:
            voices = rng.sample(pool, repeats)
            for _ in range(repeats):
                record = _voice(rng, split, voices)
                n = len(plan)
                plan.append(
                    record
                    | {
                        "split": split,
                        "sentence": sentence,
                        "path": f"common_voice_{language}_demo{n:05d}_{_digest(sentence, record)}.mp3",
                        "client_id": f"espeak-{record['voice']}",
                        "sentence_id": f"demo{ids[sentence]:04d}",
                    }
                )
    return plan


def _digest(sentence: str, voice: dict) -> str:
    """8 hex digits of what a clip says and how: a clip of another corpus is never taken for it."""
    said = f"{sentence}|{voice['voice']}|{voice['speed']}|{voice['pitch']}"
    return hashlib.sha256(said.encode("utf-8")).hexdigest()[:8]


def _render(record: dict, clips: Path, language: str) -> None:
    import soundfile as sf

    samples, sr = speak(record["sentence"], language, record["voice"], record["speed"], record["pitch"])
    audio = resample(samples, sr, CV_SAMPLE_RATE)
    tmp = clips / (record["path"] + ".tmp")
    sf.write(str(tmp), audio, CV_SAMPLE_RATE, format="MP3", subtype="MPEG_LAYER_III")
    tmp.rename(clips / record["path"])


def _write_tsv(path: Path, records: list[dict], language: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        w.writerow(CV_COLUMNS)
        for r in records:
            w.writerow(
                [r["client_id"], r["path"], r["sentence_id"], r["sentence"], "", 2, 0, "", "", "", "", language, ""]
            )


def clip_plan(folder: str | Path) -> list[dict]:
    """The records a finished corpus was made from (split, sentence, path, voice, speed,
    pitch), drawn again from its ``demo.json``: how each clip was spoken, for
    ``speech_timing`` to speak it again with word timing."""
    marker = Path(folder) / "demo.json"
    if not marker.is_file():
        raise UserError(f"{folder} is not a demo corpus (no demo.json): make one with whisper-tune make-demo-data")
    made = json.loads(marker.read_text(encoding="utf-8"))["made_with"]
    opts = DemoDataOptions(**made["options"])
    sentences = demo_sentences(made["language"])[: opts.sentences]
    return [r | {"language": made["language"]} for r in _plan(split_sentences(sentences, opts), opts, made["language"])]


def finished_corpus(folder: str | Path) -> DemoDataResult | None:
    """A corpus folder that :func:`make_demo_data` finished with today's layout, whatever its
    options (a subset made for a quick try or a test), else None."""
    marker = Path(folder) / "demo.json"
    if not marker.exists():
        return None
    done = json.loads(marker.read_text(encoding="utf-8"))
    if done.get("made_with", {}).get("layout") != CORPUS_LAYOUT:
        return None
    return DemoDataResult(Path(folder), done["clips"], reused=True)


def make_demo_data(
    out_dir: str | Path,
    language: str = "mr",
    options: DemoDataOptions | None = None,
    workers: int = 4,
    progress: bool = True,
) -> DemoDataResult:
    """Write the demo corpus under ``out_dir/<language>/``; a finished folder is reused."""
    from tqdm.auto import tqdm

    opts = options or DemoDataOptions()
    folder = Path(out_dir) / language
    marker = folder / "demo.json"
    wanted = {"options": asdict(opts), "language": language, "layout": CORPUS_LAYOUT}
    if marker.exists():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("made_with") == wanted:
            return DemoDataResult(folder, done["clips"], reused=True)
    sentences = demo_sentences(language)[: opts.sentences]
    splits = split_sentences(sentences, opts)
    plan = _plan(splits, opts, language)
    clips = folder / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    wanted_clips = {r["path"] for r in plan}
    for old in clips.glob("*.mp3"):  # clips of an earlier layout or other options
        if old.name not in wanted_clips:
            old.unlink()
    todo = [r for r in plan if not (clips / r["path"]).exists()]
    with ThreadPoolExecutor(workers) as pool:  # espeak-ng and LAME run outside the GIL
        for _ in tqdm(
            pool.map(lambda r: _render(r, clips, language), todo),
            total=len(todo),
            unit="clip",
            desc="speak demo sentences",
            disable=not progress,
        ):
            pass
    counts = {}
    for split in SPLITS:
        rows = [r for r in plan if r["split"] == split]
        _write_tsv(folder / f"{split}.tsv", rows, language)
        counts[split] = len(rows)
    _write_tsv(folder / "validated.tsv", [r for r in plan if r["split"] not in UNSEEN_SPLITS], language)
    made = {"made_with": wanted, "clips": counts, "new_words": new_words(splits)}
    marker.write_text(json.dumps(made, indent=2, ensure_ascii=False), encoding="utf-8")
    return DemoDataResult(folder, counts)
