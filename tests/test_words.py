"""Word time stamps by cross-attention alignment: the DTW path, the split into words, and the
words every engine returns (ordered, inside their segment, inside the file), through the
writers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from whisper_tune.audio import SAMPLE_RATE, load_audio
from whisper_tune.inference import DecodingOptions, Segment, Transcript, Word, get_writer, open_engine
from whisper_tune.inference.words import HEADS_FILE, add_words, alignment_heads, dtw, split_words


def test_dtw_takes_transformers_path():
    from transformers.models.whisper.generation_whisper import _dynamic_time_warping

    rng = np.random.default_rng(0)
    for shape in ((1, 1), (1, 9), (7, 1), (12, 40), (30, 31)):
        cost = rng.standard_normal(shape)
        rows, cols = dtw(cost)
        theirs = _dynamic_time_warping(cost)
        assert rows.tolist() == theirs[0].tolist() and cols.tolist() == theirs[1].tolist()


def test_dtw_follows_a_cheap_diagonal():
    cost = np.ones((5, 10))
    for i in range(5):
        cost[i, 2 * i : 2 * i + 2] = -5.0
    rows, cols = dtw(cost)
    firsts = [int(cols[np.flatnonzero(rows == i)[0]]) for i in range(5)]
    assert firsts == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("text", [" आम्ही रविवारी बागेत फिरायला जातो.", " Hello, world! It's 3:30pm.", " naïve café"])
def test_words_split_on_spaces_and_keep_every_token(tokenizer, text):
    tokens = tokenizer.encode(text, add_special_tokens=False)
    words = split_words(tokenizer, tokens, "mr")
    assert [w for w, _ in words] == text.split()
    assert sum(n for _, n in words) == len(tokens)


def test_heads_come_from_the_adapter_folder_first(tiny_model, tmp_path):
    layers, heads = tiny_model.config.decoder_layers, tiny_model.config.decoder_attention_heads
    assert alignment_heads(tiny_model) == [(layer, h) for layer in range(layers // 2, layers) for h in range(heads)]
    (tmp_path / HEADS_FILE).write_text(json.dumps({"alignment_heads": [[0, 1]]}))
    assert alignment_heads(tiny_model, tmp_path) == [(0, 1)]


def _check_words(segments, seconds: float):
    words = [w for s in segments for w in s.words]
    assert words, "no words"
    for s in segments:
        assert all(s.start <= w.start <= w.end <= s.end for w in s.words)
        assert " ".join(w.word for w in s.words) == " ".join(s.text.split())
    starts = [w.start for w in words]
    assert starts == sorted(starts) and 0.0 <= words[0].start and words[-1].end <= seconds + 1e-3
    assert all(w.start >= p.end - 1e-3 for p, w in zip(words, words[1:]))


@pytest.fixture(scope="module")
def clip(small_corpus):
    return load_audio(sorted((small_corpus / "clips").glob("*.mp3"))[0])


def test_aligned_words_are_ordered_and_inside_their_segments(tiny_model, processor, clip):
    audio = np.concatenate([clip, clip, clip])
    third = len(clip) / SAMPLE_RATE
    segments = [
        Segment(0.0, third, "आम्ही रविवारी बागेत"),
        Segment(third, 2 * third, ""),
        Segment(2 * third, 3 * third, "फिरायला जातो."),
    ]
    timed = add_words(tiny_model, processor, audio, segments, "mr", "transcribe")
    assert [s.text for s in timed] == [s.text for s in segments] and timed[1].words == ()
    _check_words(timed, len(audio) / SAMPLE_RATE)
    assert all(0.0 <= w.probability <= 1.0 for s in timed for w in s.words)


def test_every_engine_gives_words_on_the_files_timeline(tiny_model_dir, tmp_path, clip):
    import torch

    audio = np.concatenate([clip, np.zeros(SAMPLE_RATE, np.float32), clip])
    greedy = DecodingOptions.greedy()  # the random model fails every threshold: no fallback, for time
    engines = [open_engine(tiny_model_dir, language="mr", device=torch.device("cpu"), decoding=greedy)]
    if pytest.importorskip("faster_whisper"):
        from whisper_tune.export import export_ct2

        engines.append(
            open_engine(
                export_ct2(str(tiny_model_dir), tmp_path / "ct2", quantization="int8"), language="mr", decoding=greedy
            )
        )
    for engine in engines:
        ((segments, _),) = engine.transcribe([audio], word_timestamps=True)
        if any(s.text for s in segments):
            _check_words([s for s in segments if s.text], len(audio) / SAMPLE_RATE)


def test_writers_carry_the_words(tmp_path):
    words = (Word(0.5, 0.9, "नमस्कार", 0.8), Word(1.0, 1.42, "जग", 0.6))
    t = Transcript("a.wav", "mr", 2.0, [Segment(0.5, 1.5, "नमस्कार जग", words=words)])
    data = json.loads(get_writer("json").format(t))
    assert data["segments"][0]["words"] == [
        {"start": 0.5, "end": 0.9, "word": "नमस्कार", "probability": 0.8},
        {"start": 1.0, "end": 1.42, "word": "जग", "probability": 0.6},
    ]
    srt = get_writer("srt").format(t)
    assert "1\n00:00:00,500 --> 00:00:00,900\nनमस्कार\n" in srt and "2\n00:00:01,000 --> 00:00:01,420\nजग\n" in srt
    vtt = get_writer("vtt").format(t)
    assert "00:00:00.500 --> 00:00:01.500\n<00:00:00.500><c>नमस्कार</c> <00:00:01.000><c>जग</c>\n" in vtt
    plain = Transcript("a.wav", "mr", 2.0, [Segment(0.5, 1.5, "नमस्कार जग")])
    assert "words" not in json.loads(get_writer("json").format(plain))["segments"][0]
    assert get_writer("srt").format(plain) == "1\n00:00:00,500 --> 00:00:01,500\nनमस्कार जग\n"
