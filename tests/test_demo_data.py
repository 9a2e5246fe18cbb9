import csv
import json
import random
from collections import Counter
from importlib import resources
from pathlib import Path

import soundfile as sf

from whisper_tune.demo_data import (
    CORPUS_LAYOUT,
    CV_COLUMNS,
    CV_SAMPLE_RATE,
    DemoDataOptions,
    demo_sentences,
    finished_corpus,
    make_demo_data,
    new_words,
    split_sentences,
    words,
)


def _rows(folder, split):
    with open(folder / f"{split}.tsv", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return reader.fieldnames, list(reader)


def test_sentences_are_ours_distinct_and_varied():
    header = (resources.files("whisper_tune") / "assets" / "demo_sentences_mr.txt").read_text(encoding="utf-8")
    assert "written for whisper-tune" in header.lower().replace("\n# ", " ") and "CC0" in header
    sentences = demo_sentences("mr")
    assert len(sentences) >= 1500 and len(set(sentences)) == len(sentences)
    assert all(any("\u0900" <= ch <= "\u097f" for ch in s) for s in sentences)  # Devanagari
    assert all(3 <= len(words(s)) <= 15 for s in sentences)
    # varied vocabulary: over a thousand words, and rare ones are common (the unseen split needs them)
    held_by = Counter(w for s in sentences for w in set(words(s)))
    assert len(held_by) >= 1000
    assert sum(n <= 2 for n in held_by.values()) >= 0.4 * len(held_by)
    assert max(n for w, n in held_by.items()) < 0.25 * len(sentences)  # no word in a quarter of the sentences


def test_unseen_and_dev_hold_their_rarest_words_out_of_training():
    """On the whole text: disjoint splits of the asked sizes; every unseen and dev sentence's
    rarest word is absent from training, while test sentences mostly share training's words."""
    sentences = demo_sentences("mr")
    splits = split_sentences(sentences, DemoDataOptions())
    n = round(0.05 * len(sentences))
    assert {k: len(v) for k, v in splits.items()} == {"train": len(sentences) - 3 * n, "test": n, "unseen": n, "dev": n}
    assert sum(len(v) for v in splits.values()) == len({s for v in splits.values() for s in v}) == len(sentences)
    held_by = Counter(w for s in sentences for w in set(words(s)))
    trained = {w for s in splits["train"] for w in words(s)}
    for split in ("unseen", "dev"):
        assert all(min(words(s), key=held_by.__getitem__) not in trained for s in splits[split])
    shares = new_words(splits)
    assert shares["unseen"] > 0.3 and shares["dev"] > 0.3 and shares["test"] < 0.1
    assert split_sentences(sentences, DemoDataOptions()) == splits  # seeded: the same on every run


def test_common_voice_layout_disjoint_by_sentence(small_corpus):
    header, train = _rows(small_corpus, "train")
    assert tuple(header) == CV_COLUMNS
    names = ("train", "dev", "test", "unseen")
    splits = {s: {r["sentence"] for r in _rows(small_corpus, s)[1]} for s in names}
    assert sum(map(len, splits.values())) == len(set.union(*splits.values()))  # no sentence in two splits
    validated = _rows(small_corpus, "validated")[1]
    assert len(validated) == sum(len(_rows(small_corpus, s)[1]) for s in ("train", "dev", "test"))
    # unseen-voices: the test sentences again; both unseen splits in voices no other clip has
    _, unseen_voices = _rows(small_corpus, "unseen-voices")
    assert {r["sentence"] for r in unseen_voices} == splits["test"]
    trained = {r["client_id"] for r in validated}
    new = {r["client_id"] for s in ("unseen", "unseen-voices") for r in _rows(small_corpus, s)[1]}
    assert trained and new and not trained & new
    info = sf.info(str(small_corpus / "clips" / train[0]["path"]))
    assert info.samplerate == CV_SAMPLE_RATE and info.format == "MP3" and info.duration > 0.5


def test_repeats_use_different_voices_rerun_is_reused_and_an_old_layout_is_rebuilt(tmp_path):
    opts = DemoDataOptions(sentences=12, train_repeats=2)
    first = make_demo_data(tmp_path, "mr", opts, progress=False)
    _, train = _rows(first.folder, "train")
    by_sentence = {}
    for r in train:
        by_sentence.setdefault(r["sentence"], set()).add(r["client_id"])
    assert all(len(voices) == 2 for voices in by_sentence.values())
    assert first.clips == {"train": 2 * 9, "dev": 1, "test": 1, "unseen": 1, "unseen-voices": 1}
    again = make_demo_data(tmp_path, "mr", opts, progress=False)
    assert again.reused and again.clips == first.clips
    assert finished_corpus(first.folder).clips == first.clips  # the demo takes a finished subset as it is
    marker = first.folder / "demo.json"
    made = json.loads(marker.read_text(encoding="utf-8"))
    made["made_with"]["layout"] = CORPUS_LAYOUT - 1  # a corpus of the previous layout
    marker.write_text(json.dumps(made), encoding="utf-8")
    assert finished_corpus(first.folder) is None
    assert not make_demo_data(tmp_path, "mr", opts, progress=False).reused
    # other options in the same folder: no clip of the first corpus is taken for one of the second
    other = make_demo_data(tmp_path, "mr", DemoDataOptions(sentences=12, seed=1), progress=False)
    assert len(list((other.folder / "clips").glob("*.mp3"))) == sum(other.clips.values())


def test_unseen_voice_settings_lie_outside_the_training_ranges():
    """Speeds and pitches of both unseen splits are drawn outside the ranges of every other split."""
    from whisper_tune.demo_data import PITCH_RANGE, SPEED_RANGE, UNSEEN_VOICES, VOICES, _voice

    assert not set(UNSEEN_VOICES) & set(VOICES)
    rng = random.Random(0)
    for split in ("unseen", "unseen-voices"):
        for _ in range(200):
            seen, unseen = _voice(rng, "dev", list(VOICES)), _voice(rng, split, list(UNSEEN_VOICES))
            assert SPEED_RANGE[0] <= seen["speed"] <= SPEED_RANGE[1]
            assert PITCH_RANGE[0] <= seen["pitch"] <= PITCH_RANGE[1]
            assert not SPEED_RANGE[0] <= unseen["speed"] <= SPEED_RANGE[1]
            assert not PITCH_RANGE[0] <= unseen["pitch"] <= PITCH_RANGE[1]


def test_the_english_replay_sentences_are_distinct_and_never_the_cards():
    """The demo's replay corpus (make-demo-data --language en) must not hold a sentence of
    the card's English set, which measures what replay keeps; the asset is what the
    composer writes."""
    import importlib.util

    from whisper_tune.card_sets import card_sentences

    english = demo_sentences("en")
    assert len(english) == len(set(english)) >= 300
    assert not {s.lower() for s in english} & {s.lower() for s in card_sentences("en")}
    path = Path(__file__).resolve().parents[1] / "scripts" / "compose_replay_sentences_en.py"
    spec = importlib.util.spec_from_file_location("compose_en", path)
    composer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(composer)
    assert composer.compose() == english
