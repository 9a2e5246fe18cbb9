"""Batched long-form transcription: time-stamped tokens equal ``generate``'s, windows cover
files within 30 s, segments land at their window's offset, the batch size changes nothing,
and windows failing the thresholds take the fallback path."""

import numpy as np
import pytest
import torch

from whisper_tune.audio import N_SAMPLES, SAMPLE_RATE
from whisper_tune.inference import longform
from whisper_tune.inference.greedy import Decoded, DecodeSpec, GreedyDecoder, prompt_ids
from whisper_tune.inference.options import DecodingOptions
from whisper_tune.inference.results import Segment
from whisper_tune.modeling import load_processor, set_generation_language

SHORT = 24  # tokens per window: a random model rarely ends a window, and the CPU pays per step


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_dir):
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    processor = load_processor(str(tiny_model_dir))
    set_generation_language(model, processor.tokenizer, "mr", "transcribe")
    model.generation_config.max_initial_timestamp_index = 50
    return model, processor


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)


def test_timestamped_tokens_equal_generate(model_and_processor):
    model, processor = model_and_processor
    features = torch.randn(3, 80, 3000, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    eos = model.generation_config.eos_token_id
    with torch.inference_mode():
        out = model.generate(
            input_features=features, language="mr", task="transcribe", return_timestamps=True, max_new_tokens=SHORT
        )
        prompt = prompt_ids(model, processor.tokenizer, "mr", "transcribe", timestamps=True)
        decoder = GreedyDecoder(
            model, DecodeSpec(4, len(prompt) + SHORT, True), torch.float32, max_initial_timestamp_index=50
        )
        got = decoder.decode(features, prompt, SHORT)  # 3 windows in a batch of 4
    expected = [row[: row.index(eos)] if eos in row else row for row in out.tolist()]
    ts_begin = model.generation_config.no_timestamps_token_id + 1
    assert [d.tokens for d in got] == expected
    assert any(t >= ts_begin for t in expected[0]) and any(t < ts_begin for t in expected[0])  # both kinds
    assert all(d.avg_logprob < 0 and 0 <= d.no_speech_prob <= 1 for d in got)


def test_windows_cover_the_file_and_cut_in_a_pause():
    audio = _noise(70.0, 0)
    audio[int(25.0 * SAMPLE_RATE) : int(25.6 * SAMPLE_RATE)] *= 0.001  # a pause in the first window's last 8 s...
    audio[int(28.0 * SAMPLE_RATE) : int(28.2 * SAMPLE_RATE)] = 0.0  # ...and a shorter, quieter one
    spans = longform.cut_windows(audio)
    assert spans[0][0] == 0 and spans[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no gap, no overlap
    assert all(0 < end - start <= N_SAMPLES for start, end in spans)
    assert 25.2 * SAMPLE_RATE <= spans[0][1] <= 25.4 * SAMPLE_RATE  # the middle of the longer pause
    assert longform.cut_windows(audio[:N_SAMPLES]) == [(0, N_SAMPLES)]
    assert len(longform.cut_windows(audio[: N_SAMPLES + 1])) == 2


def test_segments_are_split_at_time_stamps_and_shifted_by_the_window(model_and_processor, monkeypatch):
    model, processor = model_and_processor
    tok = processor.tokenizer
    ts = model.generation_config.no_timestamps_token_id + 1
    hello, world = tok.encode(" hello", add_special_tokens=False), tok.encode(" world", add_special_tokens=False)
    tokens = [ts, *hello, ts + 50, ts + 50, *world, ts + 125, *hello]  # the last segment is cut by the window
    assert longform.split_segments(tokens, ts, tok, 20.0) == [
        (0.0, 1.0, "hello"),
        (1.0, 2.5, "world"),
        (2.5, 20.0, "hello"),
    ]
    window = longform.Window(0, 40 * SAMPLE_RATE, 60 * SAMPLE_RATE)
    args = (model, processor, None, window, Decoded(tokens, -0.1, 0.01), "mr", "transcribe", DecodingOptions())
    segments, tail = longform._window_segments(*args)
    # the cut segment is left for a tail window from its time stamp on, as openai's seek would
    assert [(s.start, s.end, s.text) for s in segments] == [(40.0, 41.0, "hello"), (41.0, 42.5, "world")]
    assert tail == longform.Window(0, int(42.5 * SAMPLE_RATE), 60 * SAMPLE_RATE)
    assert {s.avg_logprob for s in segments} == {-0.1} and {s.temperature for s in segments} == {0.0}
    segments, tail = longform._window_segments(*args, last_round=True)  # no more rounds: kept, to the window's end
    assert tail is None and [(s.start, s.end, s.text) for s in segments][-1] == (42.5, 60.0, "hello")


def test_resume_point_follows_openai_seek(model_and_processor):
    model, processor = model_and_processor
    tok = processor.tokenizer
    ts = model.generation_config.no_timestamps_token_id + 1
    hello = tok.encode(" hello", add_special_tokens=False)
    assert longform.resume_point([ts, *hello, ts + 50], ts) is None  # closed: the window's speech is done
    assert longform.resume_point(hello, ts) is None  # no stamp at all
    finished = [ts, *hello, ts + 50]
    assert longform.resume_point([*finished, ts + 50], ts) == (len(finished) + 1, 1.0)  # next segment deferred
    assert longform.resume_point([*finished, ts + 60, *hello], ts) == (len(finished) + 1, 1.2)  # cut mid-segment


def test_batch_size_does_not_change_the_output(model_and_processor):
    model, processor = model_and_processor
    audios = [_noise(65.0, 1), _noise(4.0, 2), _noise(12.0, 3)]
    greedy = DecodingOptions.greedy()
    one = longform.transcribe_batched(
        model, processor, audios, "mr", batch_size=1, decoding=greedy, max_new_tokens=SHORT
    )
    four = longform.transcribe_batched(
        model, processor, audios, "mr", batch_size=4, decoding=greedy, max_new_tokens=SHORT
    )
    assert one == four
    assert [lang for _, lang in one] == ["mr"] * 3
    long_segments = one[0][0]
    assert long_segments and long_segments[-1].end <= 65.0 and long_segments[-1].start >= 30.0  # later windows
    assert all(a.start <= b.start for a, b in zip(long_segments, long_segments[1:]))


def test_windows_failing_the_thresholds_are_decoded_again(model_and_processor, monkeypatch):
    model, processor = model_and_processor
    calls = []

    def fallback(model, processor, audio, language, task, decoding):
        calls.append((len(audio), decoding))
        return [Segment(1.0, 2.0, "again", temperature=0.2)], language

    monkeypatch.setattr(longform, "transcribe_audio", fallback)
    audio = _noise(40.0, 4)
    doubt_all = DecodingOptions(logprob_threshold=0.0, no_speech_threshold=None)  # every mean log-prob is < 0
    ((segments, _),) = longform.transcribe_batched(
        model, processor, [audio], "mr", decoding=doubt_all, max_new_tokens=SHORT
    )
    spans = longform.cut_windows(audio)
    assert [n for n, _ in calls] == [end - start for start, end in spans]
    assert all(d.temperature == doubt_all.temperature[1:] and not d.condition_on_previous_text for _, d in calls)
    assert [(s.start, s.text) for s in segments] == [
        (1.0, "again"),
        (round(spans[1][0] / SAMPLE_RATE + 1.0, 3), "again"),
    ]
    calls.clear()
    silent = DecodingOptions(logprob_threshold=0.0, no_speech_threshold=0.0)  # doubtful and "silent": dropped
    assert longform.transcribe_batched(model, processor, [audio], "mr", decoding=silent, max_new_tokens=SHORT) == [
        ([], "mr")
    ]
    no_ramp = DecodingOptions(temperature=(0.0,), logprob_threshold=0.0, no_speech_threshold=None)
    assert (
        longform.transcribe_batched(model, processor, [audio], "mr", decoding=no_ramp, max_new_tokens=SHORT)[0][0]
        and not calls
    )


def test_robust_transcription_prints_no_length_warning(model_and_processor, capfd):
    from whisper_tune.inference.generate import transcribe_audio

    model, processor = model_and_processor
    for _ in range(2):
        transcribe_audio(model, processor, _noise(3.0, 5), "mr", max_new_tokens=4, decoding=DecodingOptions.greedy())
    assert "max_length" not in capfd.readouterr().err


def test_a_listener_hears_each_group_of_windows_before_the_next_is_decoded(model_and_processor, monkeypatch):
    """``segments_as_decoded`` (the API's streaming): the batched loop reports each file's
    segments in order, group by group, while later windows are still to decode, and the
    segments are those of a call without a listener; a listener that raises stops the loop."""
    model, processor = model_and_processor
    audios = [_noise(95.0, 4), _noise(12.0, 5)]  # four windows, then one
    run = {"batch_size": 2, "decoding": DecodingOptions.greedy(), "max_new_tokens": SHORT}
    plain = longform.transcribe_batched(model, processor, audios, "mr", **run)
    events, decode = [], longform._decode

    def recording(*args, **kwargs):
        events.append(("decode", [(w.file, w.start) for w in args[3]]))
        return decode(*args, **kwargs)

    monkeypatch.setattr(longform, "_decode", recording)
    heard = [[], []]

    def listener(file, segments):
        events.append(("heard", file))
        heard[file] += segments

    with longform.segments_as_decoded(listener):
        streamed = longform.transcribe_batched(model, processor, audios, "mr", **run)
    assert streamed == plain and heard == [segments for segments, _ in plain]
    assert all(segments for segments in heard)  # both files said something
    first_heard = next(i for i, (what, _) in enumerate(events) if what == "heard")
    last_decode = max(i for i, (what, _) in enumerate(events) if what == "decode")
    assert first_heard < last_decode  # the first words went out while windows were still to decode
    starts = [start for what, batch in events if what == "decode" for _, start in batch]
    assert sorted(starts[:2]) == [0, longform.cut_windows(audios[0])[1][0]]  # the file's first two windows first

    def leaving(file, segments):
        raise ConnectionError("the client went away")

    events.clear()
    with longform.segments_as_decoded(leaving), pytest.raises(ConnectionError):
        longform.transcribe_batched(model, processor, audios, "mr", **run)
    third = longform.cut_windows(audios[0])[2][0]
    decoded = [(file, start) for what, batch in events if what == "decode" for file, start in batch]
    assert decoded and all(file == 0 and start < third for file, start in decoded)  # the first group only
