"""The report card: base and fine-tune side by side on the lines where a fine-tuned Whisper
gets quietly worse.

A fine-tune is judged by its WER on held-out clips of its language, and that number falls.
What rises unseen is what users then complain about: text written over silence, noise or
music; repetition loops; long files whose timestamps go backwards, run past the end or skip
a 30 s window; English (which most users still need) and spoken-language identification,
both forgotten by a model trained on one language. The card decodes the same sets with both
models and gives every line a verdict, so a fine-tune that got worse somewhere says so in
its headline instead of in an issue three weeks later.

Nothing here loads a model: a model is a plain callable ``decode(audios, language)`` that
returns ``(text, segments, detected_language)`` per clip, so any engine can stand behind it.
Scores reuse evaluation's own scoring (:func:`whisper_tune.evaluation.summarize`, orthographic
and normalized WER/CER) and loop rule (:func:`whisper_tune.evaluation.has_loop`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, join_with_pauses
from .errors import UserError
from .evaluation import GenerationResult, has_loop, summarize
from .normalizers import normalize

log = logging.getLogger(__name__)

TOLERANCE = 0.5  # percentage points: a smaller difference between the columns is "same"
WINDOW_SECONDS = 30.0  # one Whisper window: each one holding speech must have a segment starting in it
MIN_SPEECH_IN_WINDOW = 1.0  # seconds of speech inside a window that make it "hold speech"
TIMESTAMP_SLACK = 1.0  # seconds a last segment may end past the file (timestamps are 20 ms tokens, rounded up)
LOWER, HIGHER = "lower", "higher"  # which way a line is better
CARD_BEGIN, CARD_END = "<!-- whisper-tune report card -->", "<!-- /whisper-tune report card -->"

Decoded = tuple[str, Sequence, str | None]  # text, segments (.start/.end/.text seconds), detected language
Decode = Callable[[list[np.ndarray], str | None], Sequence[Decoded]]


# ---- the lines' measures -------------------------------------------------------------


def has_text(text: str) -> bool:
    """Any letter or digit once punctuation, symbols and spaces are gone: "..." or "♪" on
    music is an honest answer, "Thank you." on silence is not. A tag such as "[Music]" counts
    as text: it lands in the transcript and the subtitles like any other words."""
    return bool(normalize(text))


def _share(flags: list[bool], what: str) -> float:
    if not flags:
        raise UserError(f"no {what} to score: the set is empty")
    return sum(flags) / len(flags)


def false_text_rate(texts: Sequence[str]) -> float:
    """Share (0-1) of non-speech clips the model wrote text for; 1.0 is a model that always writes."""
    return _share([has_text(t) for t in texts], "non-speech hypotheses")


def loop_rate(texts: Sequence[str]) -> float:
    """Share (0-1) of hypotheses with a repetition loop, by evaluation's rule (``has_loop``: a
    word n-gram repeated back to back, three times for 2-4 words and four for one word, or a
    piece of a word eight times), so the card and ``evaluate``'s flags count the same loops."""
    return _share([has_loop(t) for t in texts], "hypotheses")


# ---- long-form files -----------------------------------------------------------------


@dataclass(frozen=True)
class LongFile:
    """Clips joined into one long file, with where each clip lies in it."""

    audio: np.ndarray  # mono float32 at 16 kHz
    reference: str  # the clips' references joined with spaces
    spans: tuple[tuple[float, float], ...]  # (start, end) seconds of each clip: whole samples / 16 kHz

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE

    def sample_span(self, i: int) -> tuple[int, int]:
        """Clip ``i``'s span in samples: ``audio[start:end]`` is the clip, exactly."""
        start, end = self.spans[i]
        return round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)


def _groups(sizes: list[int], gaps: list[int], min_samples: int) -> list[list[int]]:
    """Consecutive clip indices per file, each file at least ``min_samples`` long; the
    clips left over at the end join the last file rather than being dropped."""
    groups, current, length = [], [], 0
    for i, size in enumerate(sizes):
        length += size + (gaps[i] if current else 0)
        current.append(i)
        if length >= min_samples:
            groups.append(current)
            current, length = [], 0
    if current and not groups:
        seconds = (sum(sizes) + sum(gaps[1:])) / SAMPLE_RATE
        raise UserError(
            f"the clips give {seconds:.0f} s, less than one long file: give more clips or a lower min_seconds"
        )
    if current:
        groups[-1] += current
    return groups


def _join(clips: list[np.ndarray], references: list[str], gaps: list[int], rng: np.random.Generator) -> LongFile:
    audio, starts = join_with_pauses(clips, gaps, rng)
    spans = tuple((at / SAMPLE_RATE, (at + clip.size) / SAMPLE_RATE) for at, clip in zip(starts, clips))
    return LongFile(audio, " ".join(r.strip() for r in references), spans)


def join_clips(
    clips: Sequence[np.ndarray],
    references: Sequence[str],
    min_seconds: float = 120.0,
    pause: tuple[float, float] = (0.6, 1.5),
    seed: int = 0,
) -> list[LongFile]:
    """Held-out clips joined in order into files of at least ``min_seconds``, with seeded
    pauses of low noise between clips: a long-form test whose reference and clip times are
    known exactly, made from the same held-out clips as the target WER."""
    if len(clips) != len(references):
        raise UserError(f"{len(clips)} clips but {len(references)} references: give one reference per clip")
    rng = np.random.default_rng(seed)
    audio = [np.asarray(c, dtype=np.float32).reshape(-1) for c in clips]
    gaps = [round(rng.uniform(*pause) * SAMPLE_RATE) for _ in audio]
    groups = _groups([a.size for a in audio], gaps, round(min_seconds * SAMPLE_RATE))
    return [_join([audio[i] for i in g], [references[i] for i in g], [gaps[i] for i in g], rng) for g in groups]


# ---- timestamp sanity ----------------------------------------------------------------


@dataclass(frozen=True)
class TimestampCheck:
    """Whether a long file's segments are usable as subtitles, and which rule broke."""

    ok: bool
    failed: tuple[str, ...]  # broken rules: "ordered", "inside", "every_window"
    segments: int
    unordered: int  # segments starting before the one before, or ending before they start
    outside: int  # segments starting before 0 or ending past the file (beyond TIMESTAMP_SLACK)
    speech_windows: int  # 30 s windows holding speech
    empty_windows: int  # of those, windows where no segment starts


def _speech_windows(duration: float, speech: Sequence[tuple[float, float]] | None) -> list[float]:
    """Starts of the 30 s windows holding at least MIN_SPEECH_IN_WINDOW s of speech (every
    window when the speech spans are unknown)."""
    starts = np.arange(0.0, duration, WINDOW_SECONDS).tolist()
    if speech is None:
        return starts
    held = [sum(max(0.0, min(e, w + WINDOW_SECONDS) - max(s, w)) for s, e in speech) for w in starts]
    return [w for w, seconds in zip(starts, held) if seconds >= MIN_SPEECH_IN_WINDOW]


def timestamp_sanity(
    segments: Sequence, duration: float, speech: Sequence[tuple[float, float]] | None = None
) -> TimestampCheck:
    """Segments (``.start``/``.end`` seconds) ordered, inside ``[0, duration]``, and one
    starting in or running into every 30 s window that holds speech: fine-tunes trained without timestamps
    lose them, and a long file then comes back with times that run backwards, past the end,
    or a whole window of speech silently skipped. ``speech``: the (start, end) seconds that
    hold speech (a LongFile's spans); without it every window counts as holding speech."""
    segments = list(segments)
    pairs = list(zip(segments, segments[1:]))
    unordered = sum(b.start < a.start for a, b in pairs) + sum(s.end < s.start for s in segments)
    outside = sum(s.start < 0 or s.end > duration + TIMESTAMP_SLACK for s in segments)
    windows = _speech_windows(duration, speech)
    # a window is served by a segment that starts in it or runs into it: Whisper's windows
    # follow its segments, not this 30 s grid, and a segment across a grid line is not a gap
    # (the base failed the card on exactly that: 21 segments, one grid window crossed by one)
    empty = sum(not any(s.start < w + WINDOW_SECONDS and s.end > w for s in segments) for w in windows)
    counts = {"ordered": unordered, "inside": outside, "every_window": empty}
    failed = tuple(rule for rule, n in counts.items() if n)
    return TimestampCheck(not failed, failed, len(segments), unordered, outside, len(windows), empty)


# ---- the card ------------------------------------------------------------------------


@dataclass(frozen=True)
class CardLine:
    """One row: a measure for both models, which way is better and how the fine-tune did."""

    name: str
    base: float | None  # None: not measured (its set was empty)
    tuned: float | None
    unit: str
    better: str  # LOWER or HIGHER
    note: str = ""
    group: str = ""  # what the headline calls this line ("non-speech", "English")
    tolerance: float = TOLERANCE

    def verdict(self) -> str:
        """``better``/``worse`` for the fine-tune, ``same`` within the tolerance, ``n/a``."""
        if self.base is None or self.tuned is None:
            return "n/a"
        diff = self.tuned - self.base
        if abs(diff) <= self.tolerance:
            return "same"
        return "better" if (diff < 0) == (self.better == LOWER) else "worse"


@dataclass(frozen=True)
class Card:
    """Both models' lines; verdicts and headline are derived, never stored apart from them."""

    lines: tuple[CardLine, ...]
    base_name: str = "base"
    tuned_name: str = "fine-tune"
    sizes: dict = field(default_factory=dict)  # set name -> clips (or files) measured
    remark: str = ""  # one line shown under the headline (e.g. the run's best adapter is the base)

    def groups(self, verdict: str) -> list[str]:
        """The headline names of the lines with this verdict, in card order, once each."""
        return list(dict.fromkeys(line.group or line.name for line in self.lines if line.verdict() == verdict))

    def headline(self) -> str:
        """One line: where the fine-tune is worse (first, since that is the news) and better."""
        worse, better = self.groups("worse"), self.groups("better")
        if not worse:
            head = f"{self.tuned_name} no worse than {self.base_name} on any line"
        else:
            head = f"{self.tuned_name} worse than {self.base_name} on: {', '.join(worse)}"
        return head + (f"; better on: {', '.join(better)}" if better else "")

    def to_dict(self) -> dict:
        """card.json's content: the fields, plus the headline and verdicts for readers without Python."""
        lines = [asdict(line) | {"verdict": line.verdict()} for line in self.lines]
        names = {"base_name": self.base_name, "tuned_name": self.tuned_name}
        return {"headline": self.headline(), "remark": self.remark} | names | {"sizes": self.sizes, "lines": lines}

    @classmethod
    def from_dict(cls, data: dict) -> Card:
        lines = tuple(CardLine(**{k: v for k, v in line.items() if k != "verdict"}) for line in data["lines"])
        return cls(lines, data["base_name"], data["tuned_name"], data.get("sizes", {}), data.get("remark", ""))


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def card_table(card: Card) -> list[str]:
    """The markdown table, one row per line, with the verdict column."""
    rows = [
        f"| line | {card.base_name} | {card.tuned_name} | unit | better | verdict | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for line in card.lines:
        verdict = line.verdict()
        shown = f"**{verdict}**" if verdict == "worse" else verdict
        rows.append(
            f"| {line.name} | {_cell(line.base)} | {_cell(line.tuned)} | {line.unit} | {line.better} | {shown} "
            f"| {line.note} |"
        )
    return rows


def card_section(card: Card, heading: str = "## Report card") -> str:
    """The card as a model-card README section, between markers so a later card replaces it."""
    tolerance = max((line.tolerance for line in card.lines), default=TOLERANCE)
    lines = [CARD_BEGIN, heading, "", f"**{card.headline()}.**", ""]
    lines += [card.remark, ""] if card.remark else []
    lines += [*card_table(card), ""]
    lines += [
        f"Same: within {tolerance:g} points. Both models decoded the same clips; see card.json for the numbers.",
        CARD_END,
        "",
    ]
    return "\n".join(lines)


def write_card(card: Card, folder: str | Path) -> Path:
    """``card.md`` and ``card.json`` in ``folder``; returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.md").write_text(card_section(card, heading="# Report card"), encoding="utf-8")
    (out / "card.json").write_text(json.dumps(card.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    return out


def read_card(folder: str | Path) -> Card:
    """The card a :func:`write_card` left in ``folder``."""
    path = Path(folder) / "card.json"
    if not path.is_file():
        raise UserError(f"no report card in {folder}: card.json is missing (write one with write_card)")
    return Card.from_dict(json.loads(path.read_text(encoding="utf-8")))


# ---- building the card from two decoders ---------------------------------------------


@dataclass(frozen=True)
class LabelledSet:
    """Clips with one label each: a reference text, or for language ID the language's code."""

    audios: list[np.ndarray]
    labels: list[str]

    def __post_init__(self):
        if len(self.audios) != len(self.labels):
            raise UserError(f"{len(self.audios)} clips but {len(self.labels)} labels: give one label per clip")


@dataclass(frozen=True)
class CardSets:
    """What both models are played. Only ``target`` is required; a set left empty makes its
    lines "n/a" rather than a number over nothing."""

    language: str  # the fine-tune's language: forced on the target, non-speech and long-form sets
    target: LabelledSet  # held-out clips of the target language with their references
    nonspeech: list[np.ndarray] = field(default_factory=list)  # nonspeech.nonspeech_clips' audio
    longform: list[LongFile] = field(default_factory=list)  # join_clips of held-out clips
    english: LabelledSet | None = None  # English clips with references, decoded with language "en"
    language_id: LabelledSet | None = None  # clips labelled with their language code, decoded with none given

    def sizes(self) -> dict:
        count = {"target": len(self.target.audios), "nonspeech": len(self.nonspeech), "longform": len(self.longform)}
        count |= {"english": len(self.english.audios) if self.english else 0}
        return count | {"language_id": len(self.language_id.audios) if self.language_id else 0}


# key, name, unit, better, headline group, note ({...} filled from CardSets.sizes and the language)
LINES = (
    ("wer", "target WER, orthographic", "%", LOWER, "target language", "{target} held-out clips of {language}"),
    ("cer", "target CER, orthographic", "%", LOWER, "target language", "as written, NFC"),
    ("normalized_wer", "target WER, normalized", "%", LOWER, "target language", "case, punctuation, symbols dropped"),
    ("normalized_cer", "target CER, normalized", "%", LOWER, "target language", ""),
    ("false_text", "non-speech given text", "%", LOWER, "non-speech", "{nonspeech} clips of silence, noise, music"),
    ("loops", "repetition loops", "%", LOWER, "loops", "share of every hypothesis on this card"),
    ("longform_wer", "long-form WER, normalized", "%", LOWER, "long-form", "{longform} files of joined clips"),
    ("timestamps", "long-form timestamps sane", "%", HIGHER, "timestamps", "ordered, inside, one per 30 s of speech"),
    ("english_wer", "English WER, normalized", "%", LOWER, "English", "{english} clips, language forced to en"),
    ("language_id", "language-ID accuracy", "%", HIGHER, "language ID", "{language_id} clips, language not given"),
)


def _decoded(decode: Decode, audios: Sequence[np.ndarray], language: str | None) -> list[Decoded]:
    if not len(audios):
        return []
    out = list(decode(list(audios), language))
    if len(out) != len(audios):
        raise ValueError(
            f"decode returned {len(out)} results for {len(audios)} clips: one (text, segments, language) each"
        )
    return out


def _summary(references: Sequence[str], decoded: list[Decoded]):
    """evaluation's own scoring (orthographic and normalized WER/CER) of decoded clips."""
    texts = [text for text, _, _ in decoded]
    return summarize(GenerationResult([str(i) for i in range(len(texts))], list(references), texts, 0.0))[0]


def _longform_values(files: list[LongFile], decoded: list[Decoded]) -> dict[str, float | None]:
    if not decoded:
        return {"longform_wer": None, "timestamps": None}
    checks = [timestamp_sanity(list(segs), f.seconds, f.spans) for f, (_, segs, _) in zip(files, decoded)]
    for i, check in enumerate(checks):  # which rule broke: the card's line holds the share alone
        if not check.ok:
            log.info(
                "long file %d of %d: timestamps not sane (%s): %s", i + 1, len(files), ",".join(check.failed), check
            )
    sane = [check.ok for check in checks]
    return {
        "longform_wer": _summary([f.reference for f in files], decoded).normalized_wer,
        "timestamps": 100 * _share(sane, "files"),
    }


def _column(decode: Decode, sets: CardSets) -> dict[str, float | None]:
    """Every line's value for one model, in percent."""
    target = _decoded(decode, sets.target.audios, sets.language)
    scored = _summary(sets.target.labels, target)
    values = {key: getattr(scored, key) for key in ("wer", "cer", "normalized_wer", "normalized_cer")}
    nonspeech = _decoded(decode, sets.nonspeech, sets.language)
    values["false_text"] = 100 * false_text_rate([t for t, _, _ in nonspeech]) if nonspeech else None
    longform = _decoded(decode, [f.audio for f in sets.longform], sets.language)
    values |= _longform_values(sets.longform, longform)
    english = _decoded(decode, sets.english.audios, "en") if sets.english else []
    values["english_wer"] = _summary(sets.english.labels, english).normalized_wer if english else None
    lid = _decoded(decode, sets.language_id.audios, None) if sets.language_id else []
    hits = (
        [(found or "").lower() == want.lower() for (_, _, found), want in zip(lid, sets.language_id.labels)]
        if lid
        else []
    )
    values["language_id"] = 100 * _share(hits, "language-ID clips") if lid else None
    every = target + nonspeech + longform + english + lid
    values["loops"] = 100 * loop_rate([t for t, _, _ in every])
    return values


def build_card(
    decode_base: Decode,
    decode_tuned: Decode,
    sets: CardSets,
    base_name: str = "base",
    tuned_name: str = "fine-tune",
    tolerance: float = TOLERANCE,
) -> Card:
    """Decode every set with both models and fill every line of the card."""
    if not sets.target.audios:
        raise UserError("the report card needs held-out clips of the target language: the target set is empty")
    base, tuned = _column(decode_base, sets), _column(decode_tuned, sets)
    sizes = sets.sizes()
    words = sizes | {"language": sets.language}
    lines = tuple(
        CardLine(name, base[key], tuned[key], unit, better, note.format(**words), group, tolerance)
        for key, name, unit, better, group, note in LINES
    )
    return Card(lines, base_name, tuned_name, sizes)
