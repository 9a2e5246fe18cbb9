import json
from types import SimpleNamespace as Seg

import numpy as np
import pytest

from whisper_tune.audio import SAMPLE_RATE
from whisper_tune.errors import UserError
from whisper_tune.report_card import (
    LINES,
    TIMESTAMP_SLACK,
    WINDOW_SECONDS,
    Card,
    CardLine,
    CardSets,
    LabelledSet,
    build_card,
    card_section,
    false_text_rate,
    join_clips,
    loop_rate,
    read_card,
    timestamp_sanity,
    write_card,
)

LOOP = "I am here I am here I am here I am here"


def _clips(n, seed=0, seconds=(4.0, 9.0)):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.normal(size=round(rng.uniform(*seconds) * SAMPLE_RATE))).astype(np.float32) for _ in range(n)]


# ---- false text and loops ------------------------------------------------------------


def test_false_text_counts_words_not_punctuation_or_symbols():
    assert false_text_rate(["Thank you.", "ok", "Subtitles by the community"]) == 1.0
    assert false_text_rate(["", "   ", "...", "♪ ♪", "?!"]) == 0.0
    assert false_text_rate(["", "नमस्कार", "-", "[Music]"]) == 0.5


def test_loop_rate_uses_evaluations_rule():
    assert loop_rate(["the cat sat on the mat by the door"]) == 0.0
    assert loop_rate([LOOP]) == 1.0
    assert loop_rate([LOOP, "a normal sentence", "हा हा हा हा हा हा", "another one here"]) == 0.5


def test_empty_sets_are_a_user_error():
    with pytest.raises(UserError, match="empty"):
        false_text_rate([])
    with pytest.raises(UserError, match="empty"):
        loop_rate([])


# ---- long-form joiner ----------------------------------------------------------------


def test_join_keeps_every_clip_exactly_and_in_order():
    clips = _clips(30)
    refs = [f"sentence {i}." for i in range(30)]
    files = join_clips(clips, refs, min_seconds=40, seed=3)
    assert len(files) > 1 and all(f.seconds >= 40 for f in files)
    k = 0
    for f in files:
        assert f.audio.dtype == np.float32
        assert f.reference == " ".join(refs[k : k + len(f.spans)])
        for i, (start, end) in enumerate(f.spans):
            a, b = f.sample_span(i)
            assert np.array_equal(f.audio[a:b], clips[k]) and (a, b) == (start * SAMPLE_RATE, end * SAMPLE_RATE)
            k += 1
        pauses = [s2 - e1 for (_, e1), (s2, _) in zip(f.spans, f.spans[1:])]
        assert all(0.6 <= p <= 1.5 for p in pauses)
        assert f.spans[0][0] == 0 and f.spans[-1][1] == f.seconds
    assert k == len(clips)  # the tail that was too short for a file of its own joined the last one


def test_join_is_seeded():
    clips, refs = _clips(12), ["x"] * 12
    same = [f.audio.tobytes() for f in join_clips(clips, refs, min_seconds=30, seed=1)]
    assert same == [f.audio.tobytes() for f in join_clips(clips, refs, min_seconds=30, seed=1)]
    assert same != [f.audio.tobytes() for f in join_clips(clips, refs, min_seconds=30, seed=2)]


def test_join_bad_input():
    with pytest.raises(UserError, match="one reference per clip"):
        join_clips(_clips(3), ["a", "b"])
    with pytest.raises(UserError, match="less than one long file"):
        join_clips(_clips(3), ["a", "b", "c"], min_seconds=120)


# ---- timestamp sanity ----------------------------------------------------------------


def _good(duration):
    return [Seg(start=s, end=min(s + 8.0, duration), text="words") for s in np.arange(0.0, duration, 10.0)]


def test_timestamps_good_file_passes():
    check = timestamp_sanity(_good(95.0), 95.0)
    assert check.ok and check.failed == () and check.speech_windows == 4 and check.empty_windows == 0


def test_timestamps_unordered():
    segments = _good(95.0)
    segments[2], segments[3] = segments[3], segments[2]
    check = timestamp_sanity(segments, 95.0)
    assert not check.ok and check.failed == ("ordered",) and check.unordered == 1
    backwards = [Seg(start=5.0, end=4.0, text="x")]
    assert timestamp_sanity(backwards, 10.0).failed == ("ordered",)


def test_timestamps_outside_the_file():
    late = _good(95.0) + [Seg(start=94.0, end=95.0 + TIMESTAMP_SLACK + 0.5, text="x")]
    assert timestamp_sanity(late, 95.0).failed == ("inside",)
    early = [Seg(start=-1.0, end=3.0, text="x")] + _good(95.0)[1:]
    check = timestamp_sanity(early, 95.0)
    assert check.failed == ("inside",) and check.outside == 1


def test_timestamps_window_without_a_segment():
    skipped = [s for s in _good(95.0) if not WINDOW_SECONDS <= s.start < 2 * WINDOW_SECONDS]
    check = timestamp_sanity(skipped, 95.0)
    assert check.failed == ("every_window",) and check.empty_windows == 1
    # a window that holds no speech needs no segment
    speech = [(0.0, 25.0), (65.0, 90.0)]
    assert timestamp_sanity(skipped, 95.0, speech).ok
    # a segment that runs across the grid line into the window serves it
    across = skipped + [Seg(start=28.0, end=33.0, text="x")]
    across.sort(key=lambda s: s.start)
    assert timestamp_sanity(across, 95.0).ok


# ---- the card ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world():
    """Sets of fake clips and what each clip really holds, for fake decoders to look up."""
    target = LabelledSet(_clips(6, 1), [f"mi gharī jāto {i}." for i in range(6)])
    longform = join_clips(_clips(12, 2), [f"vākya {i}" for i in range(12)], min_seconds=40, seed=0)
    english = LabelledSet(_clips(4, 3), ["The cat sat down.", "It is late.", "Open the door.", "Thank you."])
    lid = LabelledSet(_clips(4, 4), ["es", "de", "fr", "hi"])
    nonspeech = [np.zeros(5 * SAMPLE_RATE, dtype=np.float32) for _ in range(5)]
    sets = CardSets("mr", target, nonspeech, longform, english, lid)
    truth = {id(a): (t, [], "mr") for s in (target, english) for a, t in zip(s.audios, s.labels)}
    truth |= {id(a): ("", [], "xx") for a in nonspeech}
    truth |= {id(a): ("hola", [], lang) for a, lang in zip(lid.audios, lid.labels)}
    for f in longform:
        words = f.reference.split(" ")
        segments = [Seg(start=s, end=e, text=" ".join(words[2 * i : 2 * i + 2])) for i, (s, e) in enumerate(f.spans)]
        truth[id(f.audio)] = (f.reference, segments, "mr")
    return sets, truth


def _oracle(truth, **wrong):
    """A decoder that knows every clip; ``wrong`` replaces one kind of answer with a bad one."""

    def decode(audios, language):
        out = []
        for a in audios:
            text, segments, found = truth[id(a)]
            kind = "nonspeech" if found == "xx" else "lid" if language is None else language
            text = wrong.get(kind, text)
            if "loop" in wrong and text:
                text = f"{text} {LOOP}"
            out.append((text, segments, wrong.get("detected", found)))
        return out

    return decode


def _verdicts(card):
    return {line.name: line.verdict() for line in card.lines}


def test_same_model_twice_is_same_everywhere(world):
    sets, truth = world
    card = build_card(_oracle(truth), _oracle(truth), sets)
    assert set(_verdicts(card).values()) == {"same"}
    assert [line.name for line in card.lines] == [spec[1] for spec in LINES]
    assert card.headline() == "fine-tune no worse than base on any line"
    line = {line.name: line for line in card.lines}
    assert line["target WER, orthographic"].base == 0 and line["language-ID accuracy"].base == 100
    assert line["non-speech given text"].base == 0 and line["long-form timestamps sane"].base == 100


def test_a_model_that_always_says_thank_you_is_worse_on_every_line(world):
    sets, truth = world

    def thank_you(audios, language):
        return [("Thank you.", [Seg(start=0.0, end=2.0, text="Thank you.")], "en") for _ in audios]

    card = build_card(_oracle(truth), thank_you, sets)
    line = {line.name: line for line in card.lines}
    assert line["non-speech given text"].tuned == 100.0
    assert line["long-form timestamps sane"].tuned == 0.0 and line["language-ID accuracy"].tuned == 0.0
    expected = {name: "worse" for name in _verdicts(card)} | {"repetition loops": "same"}
    assert _verdicts(card) == expected
    assert card.headline().startswith("fine-tune worse than base on: target language, non-speech, long-form")


def test_each_failure_moves_its_own_line(world):
    sets, truth = world
    base = _oracle(truth)
    looping = build_card(base, _oracle(truth, loop=True), sets)
    assert _verdicts(looping)["repetition loops"] == "worse"
    every = sum(looping.sizes.values())  # the looping decoder loops on every clip but the silent non-speech ones
    assert next(line for line in looping.lines if line.name == "repetition loops").tuned == pytest.approx(
        100 * (every - looping.sizes["nonspeech"]) / every
    )
    quiet_fail = build_card(base, _oracle(truth, nonspeech="Subtitles by the community.", en="Danke schön."), sets)
    worse = [name for name, v in _verdicts(quiet_fail).items() if v == "worse"]
    assert worse == ["non-speech given text", "English WER, normalized"]
    assert quiet_fail.headline() == "fine-tune worse than base on: non-speech, English"
    fixed = build_card(_oracle(truth, nonspeech="Thank you."), base, sets)  # the fine-tune is the cure
    assert fixed.headline() == "fine-tune no worse than base on any line; better on: non-speech"


def test_tolerance_and_direction():
    line = CardLine("x", 10.0, 10.4, "%", "lower", tolerance=0.5)
    assert line.verdict() == "same"
    assert CardLine("x", 10.0, 11.0, "%", "lower").verdict() == "worse"
    assert CardLine("x", 10.0, 11.0, "%", "higher").verdict() == "better"
    assert CardLine("x", None, 11.0, "%", "higher").verdict() == "n/a"


def test_card_files_round_trip(world, tmp_path):
    sets, truth = world
    card = build_card(_oracle(truth), _oracle(truth, nonspeech="Thank you."), sets, tuned_name="mr-lora")
    folder = write_card(card, tmp_path / "card")
    assert read_card(folder) == card
    data = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    assert data["headline"] == card.headline() == "mr-lora worse than base on: non-speech"
    assert [line["verdict"] for line in data["lines"]] == [line.verdict() for line in card.lines]
    md = (folder / "card.md").read_text(encoding="utf-8")
    assert md.startswith("<!-- whisper-tune report card -->\n# Report card") and card.headline() in md
    rows = [row for row in md.splitlines() if row.startswith("| ") and "---" not in row][1:]
    assert len(rows) == len(card.lines)
    assert [row for row in rows if "**worse**" in row] == [rows[4]]
    assert rows[4].startswith("| non-speech given text | 0.0 | 100.0 | % | lower | **worse** |")
    assert card_section(card).count("\n| ") == len(card.lines) + 1  # and the header row


def test_card_bad_input(tmp_path):
    with pytest.raises(UserError, match="card.json is missing"):
        read_card(tmp_path)
    with pytest.raises(UserError, match="one label per clip"):
        LabelledSet([np.zeros(10)], [])
    with pytest.raises(UserError, match="target set is empty"):
        build_card(None, None, CardSets("mr", LabelledSet([], [])))


def test_card_of_target_only_leaves_other_lines_na(world):
    sets, truth = world
    card = build_card(_oracle(truth), _oracle(truth), CardSets("mr", sets.target))
    na = [line.name for line in card.lines if line.verdict() == "n/a"]
    assert na == [LINES[i][1] for i in (4, 6, 7, 8, 9)]  # loops are still counted, over the target clips
    assert isinstance(card, Card) and card.sizes["nonspeech"] == 0
