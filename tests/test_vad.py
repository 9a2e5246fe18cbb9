"""Voice activity detection before decoding: Silero finds the speech of a file with long
silences, and every time a back-end reports on the joined speech maps back to the file exactly."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import need_espeak

from whisper_tune.audio import SAMPLE_RATE, resample
from whisper_tune.errors import UserError
from whisper_tune.inference import Engine, Segment, VadOptions, Word
from whisper_tune.inference.vad import SpeechMap, speech_spans

pytest.importorskip("faster_whisper")


@pytest.fixture(scope="module")
def speech_file():
    """3 s of silence, a sentence, 5 s of silence, a sentence, 2 s of silence (16 kHz), and
    where the two sentences are (samples)."""
    need_espeak()
    from whisper_tune.demo_data import speak

    parts, where, at = [np.zeros(3 * SAMPLE_RATE, np.float32)], [], 3 * SAMPLE_RATE
    for text, gap in (("आम्ही रविवारी बागेत फिरायला जातो.", 5), ("आजी मला गोष्ट सांगते.", 2)):
        samples, sr = speak(text, "mr", "m1", 150, 50)
        voice = resample(samples, sr, SAMPLE_RATE)
        loud = np.flatnonzero(np.abs(voice) > 0.01)
        where.append((at + loud[0], at + loud[-1]))
        parts += [voice, np.zeros(gap * SAMPLE_RATE, np.float32)]
        at += len(voice) + gap * SAMPLE_RATE
    return np.concatenate(parts), where


def test_speech_is_found_between_the_silences(speech_file):
    audio, where = speech_file
    spans = speech_spans(audio, VadOptions())
    pad = VadOptions().speech_pad_ms * SAMPLE_RATE // 1000
    assert len(spans) == 2
    for (start, end), (first, last) in zip(spans, where):
        assert start <= first and end >= last  # all of the speech is kept
        assert first - start <= pad + SAMPLE_RATE // 10 and end - last <= pad + SAMPLE_RATE // 2  # little else
    assert spans[0][1] < spans[1][0]


def test_a_file_of_silence_has_no_speech():
    assert speech_spans(np.zeros(10 * SAMPLE_RATE, np.float32), VadOptions()) == []


def test_the_map_puts_every_joined_sample_back_where_it_was():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(10 * SAMPLE_RATE).astype(np.float32)
    spans = [(8_000, 40_000), (40_000, 41_000), (100_003, 150_017), (159_000, 160_000)]
    speech = SpeechMap(spans)
    joined = speech.cut(audio)
    assert len(joined) == sum(e - s for s, e in spans)
    for x in rng.integers(0, len(joined), 300).tolist() + [0, len(joined) - 1]:
        original = speech.to_file(x / SAMPLE_RATE)
        assert original * SAMPLE_RATE == pytest.approx(round(original * SAMPLE_RATE), abs=1e-6)
        assert audio[int(round(original * SAMPLE_RATE))] == joined[x]
    # a time on the border of two spans: the end of the first as an end, the start of the next as a start
    border = (40_000 - 8_000 + 1_000) / SAMPLE_RATE
    assert speech.to_file(border, is_end=True) == 41_000 / SAMPLE_RATE
    assert speech.to_file(border) == 100_003 / SAMPLE_RATE


def test_segments_and_words_stay_in_order_inside_their_segment():
    speech = SpeechMap([(16_000, 32_000), (80_000, 96_000)])
    words = (Word(0.2, 0.9, "a"), Word(0.9, 1.0, "b"), Word(1.0, 1.5, "c"))
    mapped = speech.segment(Segment(0.2, 1.5, "a b c", words=words))
    assert (mapped.start, mapped.end) == (1.2, 5.5)
    assert [(w.start, w.end) for w in mapped.words] == [(1.2, 1.9), (1.9, 2.0), (5.0, 5.5)]


class Joined(Engine):
    """A back-end that reports one segment per clip it is given, from 0 to its end."""

    kind = "joined"

    def __init__(self, vad=None):
        super().__init__("joined", "mr", "transcribe", vad=vad)
        self.lengths = []

    def _decode_files(self, audios, language, task, prompt, decoding, batch_size, word_timestamps):
        self.lengths += [len(a) for a in audios]
        return [([Segment(0.0, len(a) / SAMPLE_RATE, "x")], "mr") for a in audios]


def test_the_engine_decodes_only_speech_and_reports_on_the_files_timeline(speech_file):
    audio, where = speech_file
    engine = Joined()
    ((plain, _),) = engine.transcribe([audio])
    assert plain == [Segment(0.0, len(audio) / SAMPLE_RATE, "x")]  # off unless asked
    ((segments, _),) = engine.transcribe([audio], vad_filter=True)
    spans = speech_spans(audio, VadOptions())
    assert engine.lengths[-1] == sum(e - s for s, e in spans) < len(audio) / 2
    assert segments == [Segment(round(spans[0][0] / SAMPLE_RATE, 3), round(spans[-1][1] / SAMPLE_RATE, 3), "x")]
    silence = np.zeros(5 * SAMPLE_RATE, np.float32)
    calls = len(engine.lengths)
    assert engine.transcribe([silence], vad_filter=True) == [([], "mr")] and len(engine.lengths) == calls


def test_the_api_default_filters_only_files_longer_than_a_window(speech_file):
    audio, _ = speech_file
    engine = Joined(VadOptions(longer_than_s=30.0))
    engine.transcribe([audio])
    assert engine.lengths[-1] == len(audio)  # 15 s: decoded as sent
    engine.transcribe([np.concatenate([audio] * 3)])
    assert engine.lengths[-1] < 2 * len(audio)
    engine.transcribe([np.concatenate([audio] * 3)], vad_filter=False)
    assert engine.lengths[-1] == 3 * len(audio)


def test_parameters_parse_with_faster_whispers_names():
    assert VadOptions.parse("threshold=0.4, min_silence_duration_ms=500") == VadOptions(
        threshold=0.4, min_silence_duration_ms=500
    )
    assert VadOptions.parse('{"speech_pad_ms": 200}', longer_than_s=30) == VadOptions(
        speech_pad_ms=200, longer_than_s=30
    )
    for bad, says in (
        ("treshold=0.4", "unknown vad parameter 'treshold'"),
        ("threshold", "not KEY=VALUE"),
        ("threshold=high", "takes numbers"),
        ("threshold=1.5", "between 0 and 1"),
        ("{nope", "not valid JSON"),
    ):
        with pytest.raises(UserError, match=says):
            VadOptions.parse(bad)
