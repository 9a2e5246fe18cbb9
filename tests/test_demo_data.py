import csv

import soundfile as sf

from whisper_tune.demo_data import CV_COLUMNS, CV_SAMPLE_RATE, DemoDataOptions, demo_sentences, make_demo_data


def _rows(folder, split):
    with open(folder / f"{split}.tsv", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return reader.fieldnames, list(reader)


def test_sentences_are_ours_and_unique():
    sentences = demo_sentences("mr")
    assert len(sentences) >= 200 and len(set(sentences)) == len(sentences)
    assert all(any("\u0900" <= ch <= "\u097f" for ch in s) for s in sentences)  # Devanagari


def test_common_voice_layout_disjoint_by_sentence(small_corpus):
    header, train = _rows(small_corpus, "train")
    assert tuple(header) == CV_COLUMNS
    splits = {s: {r["sentence"] for r in _rows(small_corpus, s)[1]} for s in ("train", "dev", "test")}
    assert not (splits["train"] & splits["dev"] or splits["train"] & splits["test"] or splits["dev"] & splits["test"])
    assert len(_rows(small_corpus, "validated")[1]) == sum(len(_rows(small_corpus, s)[1]) for s in splits)
    # the unseen split: the test sentences again, in voices, speeds and pitches no other clip has
    _, unseen = _rows(small_corpus, "unseen")
    assert {r["sentence"] for r in unseen} == splits["test"]
    trained = {r["client_id"] for s in ("train", "dev", "test") for r in _rows(small_corpus, s)[1]}
    assert trained and not trained & {r["client_id"] for r in unseen}
    info = sf.info(str(small_corpus / "clips" / train[0]["path"]))
    assert info.samplerate == CV_SAMPLE_RATE and info.format == "MP3" and info.duration > 0.5


def test_repeats_use_different_voices_and_rerun_is_reused(tmp_path):
    opts = DemoDataOptions(sentences=12, train_repeats=2)
    first = make_demo_data(tmp_path, "mr", opts, progress=False)
    _, train = _rows(first.folder, "train")
    by_sentence = {}
    for r in train:
        by_sentence.setdefault(r["sentence"], set()).add(r["client_id"])
    assert all(len(voices) == 2 for voices in by_sentence.values())
    assert first.clips == {"train": 2 * len(by_sentence), "dev": 1, "test": 1, "unseen": 1}
    again = make_demo_data(tmp_path, "mr", opts, progress=False)
    assert again.reused and again.clips == first.clips


def test_unseen_voice_settings_lie_outside_the_training_ranges():
    """Speeds and pitches of the unseen split are drawn outside the ranges of every other split."""
    import random

    from whisper_tune.demo_data import PITCH_RANGE, SPEED_RANGE, UNSEEN_VOICES, VOICES, _voice

    assert not set(UNSEEN_VOICES) & set(VOICES)
    rng = random.Random(0)
    for _ in range(200):
        seen, unseen = _voice(rng, "train", list(VOICES)), _voice(rng, "unseen", list(UNSEEN_VOICES))
        assert SPEED_RANGE[0] <= seen["speed"] <= SPEED_RANGE[1] and PITCH_RANGE[0] <= seen["pitch"] <= PITCH_RANGE[1]
        assert not SPEED_RANGE[0] <= unseen["speed"] <= SPEED_RANGE[1]
        assert not PITCH_RANGE[0] <= unseen["pitch"] <= PITCH_RANGE[1]
