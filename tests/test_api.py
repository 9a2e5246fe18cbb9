"""The OpenAI-compatible server, through the official ``openai`` client against a live
uvicorn on a free port, with the tiny random Whisper (+ LoRA adapter) from conftest.

Random weights give arbitrary text, so every answer is compared with what the library
gives for the same clip directly (the engine's ``transcribe``, which ``whisper-tune transcribe``
runs too): the server must add nothing and lose nothing on the way."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, write_tone

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from whisper_tune.api import build_app, load_engine  # noqa: E402
from whisper_tune.audio import load_audio  # noqa: E402
from whisper_tune.inference import Engine  # noqa: E402
from whisper_tune.uploads import Limits  # noqa: E402

KEY = "sk-test-key"
MODEL_ID = "tiny-run"
LIMITS = Limits(max_mb=1.0, max_seconds=20.0)
SRT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")
VTT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)$")


class LiveServer:
    """uvicorn serving ``app`` in a background thread until ``stop``."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


class CountingEngine:
    """The engine with a record of how many inferences ran at once."""

    def __init__(self, engine):
        self.engine, self.active, self.most = engine, 0, 0
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def _counted(self, run, *args, **kwargs):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.2)  # widen the window in which a second inference could sneak in
            return run(*args, **kwargs)
        finally:
            with self.lock:
                self.active -= 1

    def transcribe(self, *args, **kwargs):
        return self._counted(self.engine.transcribe, *args, **kwargs)

    def transcript(self, *args, **kwargs):
        """The API's unit of work (one upload); counted like ``transcribe``."""
        return self._counted(self.engine.transcript, *args, **kwargs)


@pytest.fixture(scope="module")
def engine(tiny_adapter):
    import torch

    return load_engine(adapter=str(tiny_adapter), device=torch.device("cpu"))


@pytest.fixture(scope="module")
def counted(engine):
    return CountingEngine(engine)


@pytest.fixture(scope="module")
def server(counted):
    live = LiveServer(build_app(counted, LIMITS, api_key=KEY, model_id=MODEL_ID))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def clips(small_corpus) -> list[Path]:
    """Two spoken clips (48 kHz MP3) from the espeak-ng corpus."""
    return sorted((small_corpus / "clips").glob("*.mp3"))[:2]


def direct(engine, clip: Path, task: str = "transcribe") -> tuple[list, str]:
    """What the library says about a clip, without the server (the engine ``transcribe`` uses)."""
    return engine.transcribe([load_audio(clip)], task=task)[0]


@pytest.fixture(scope="module")
def transcribed(engine):
    """``transcribed(clip)``: ``direct(engine, clip)``, decoded once per clip for the module
    (each decode of the random model runs every fallback temperature: seconds per clip)."""
    done = {}

    def get(clip: Path) -> tuple[list, str]:
        if clip not in done:
            done[clip] = direct(engine, clip)
        return done[clip]

    return get


def _text(segments) -> str:
    return " ".join(s.text for s in segments if s.text).strip()


def _seconds(groups) -> float:
    h, m, s, ms = map(int, groups)
    return h * 3600 + m * 60 + s + ms / 1000


def parse_cues(text: str, pattern, numbered: bool) -> list[tuple[float, float, str]]:
    """Strict SRT/VTT cue parser: index lines (SRT), well-formed ordered times, the text."""
    cues = []
    for n, block in enumerate(text.strip().split("\n\n"), start=1):
        lines = block.split("\n")
        if numbered:
            assert lines.pop(0) == str(n)
        match = pattern.match(lines[0])
        assert match, lines[0]
        start, end = _seconds(match.groups()[:4]), _seconds(match.groups()[4:])
        assert start <= end and (not cues or start >= cues[-1][0])
        cues.append((start, end, "\n".join(lines[1:])))
    return cues


def test_every_response_format_matches_the_library(client, transcribed, clips):
    segments, language = transcribed(clips[0])
    expected = _text(segments)
    assert expected  # random weights still say something

    def ask(fmt):
        with open(clips[0], "rb") as f:
            return client.audio.transcriptions.create(model=MODEL_ID, file=f, response_format=fmt)

    assert ask("json").text == expected
    assert ask("text") == expected + "\n"

    srt = parse_cues(ask("srt"), SRT_TIME, numbered=True)
    assert [c[2] for c in srt] == [s.text for s in segments]
    assert [t for c in srt for t in c[:2]] == pytest.approx([t for s in segments for t in (s.start, s.end)], abs=1e-3)

    vtt_text = ask("vtt")
    assert vtt_text.startswith("WEBVTT\n\n")
    vtt = parse_cues(vtt_text.removeprefix("WEBVTT\n\n"), VTT_TIME, numbered=False)
    assert [c[2] for c in vtt] == [s.text for s in segments]

    verbose = ask("verbose_json")
    assert verbose.text == expected and verbose.language == "marathi" and language == "mr"
    assert verbose.duration == pytest.approx(load_audio(clips[0]).size / 16000, abs=1e-3)
    assert " ".join(s.text for s in verbose.segments if s.text).strip() == verbose.text
    assert [(s.id, s.start, s.end) for s in verbose.segments] == [(i, s.start, s.end) for i, s in enumerate(segments)]


def test_translation_prompt_and_temperature(client, engine, clips):
    with open(clips[1], "rb") as f:
        result = client.audio.translations.create(model=MODEL_ID, file=f, response_format="verbose_json")
    assert result.task == "translate" and result.text == _text(direct(engine, clips[1], "translate")[0])
    prompt = "Marathi names"  # Whisper's initial prompt: the same text as the library gives with it
    with open(clips[1], "rb") as f:
        text = client.audio.transcriptions.create(model=MODEL_ID, file=f, prompt=prompt, response_format="text")
    audio = load_audio(clips[1])
    ((segments, _),) = engine.transcribe([audio], "mr", "transcribe", prompt=prompt)
    assert text == _text(segments) + "\n"
    with open(clips[1], "rb") as f:  # a prompt longer than the decoder's context keeps its end
        assert client.audio.transcriptions.create(model=MODEL_ID, file=f, prompt="word " * 2000).text
    with open(clips[1], "rb") as f:  # sampling is accepted; out of range is not
        assert client.audio.transcriptions.create(model=MODEL_ID, file=f, temperature=0.4, language="mr").text
    with open(clips[1], "rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model=MODEL_ID, file=f, temperature=3)
    assert info.value.param == "temperature"


def test_duration_is_read_from_the_header_before_decoding(tmp_path):
    from whisper_tune.audio import probe_duration

    assert probe_duration(write_tone(tmp_path / "a.wav", seconds=3.0)) == pytest.approx(3.0)
    assert probe_duration(write_tone(tmp_path / "a.flac", seconds=2.0, sr=8000)) == pytest.approx(2.0)
    assert probe_duration(write_tone(tmp_path / "a.mp3", seconds=2.0, sr=44100)) == pytest.approx(2.0, abs=0.1)
    (tmp_path / "junk.mp3").write_bytes(b"junk" * 100)
    assert probe_duration(tmp_path / "junk.mp3") is None


def test_models_and_health(client, server):
    import httpx

    models = client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in models.data] == [
        (MODEL_ID, "model", "whisper-tune"),
        ("whisper-1", "model", "whisper-tune"),  # OpenAI's id, for the default model
    ]
    assert isinstance(models.data[0].created, int) and models.data[1].alias_of == MODEL_ID
    health = httpx.get(f"{server.url}/health")  # no key needed: for load balancers and scripts
    assert health.status_code == 200 and health.json()["model"] == MODEL_ID


def test_wrong_or_missing_key_is_401(server, clips):
    import httpx

    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    with open(clips[0], "rb") as f, pytest.raises(openai.AuthenticationError):
        wrong.audio.transcriptions.create(model=MODEL_ID, file=f)
    missing = httpx.get(f"{server.url}/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}


def test_oversize_upload_is_413(client, server, tmp_path):
    big = write_tone(tmp_path / "big.wav", seconds=40.0)  # 1.2 MB of 16-bit WAV, limit 1 MB
    with open(big, "rb") as f, pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model=MODEL_ID, file=f)
    assert info.value.status_code == 413 and "at most 1 MB" in info.value.message


def test_oversize_chunked_upload_is_stopped_while_streaming(server):
    """No Content-Length to check: the byte count stops the read."""
    import httpx

    def body():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(40):  # 2.5 MB in 64 KB chunks
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"

    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        content=body(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "file_too_large"


def test_bad_audio_too_long_bad_format_and_unknown_model(client, tmp_path, clips):
    bad = tmp_path / "notes.mp3"
    bad.write_bytes(b"these are not the sounds you are looking for" * 50)
    with open(bad, "rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model=MODEL_ID, file=f)
    assert "cannot read this audio" in info.value.message and info.value.param == "file"

    long = write_tone(tmp_path / "long.flac", seconds=30.0, sr=8000)  # small file, too long
    with open(long, "rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model=MODEL_ID, file=f)
    assert "30 s long" in info.value.message and "at most 20 s" in info.value.message

    with open(clips[0], "rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model=MODEL_ID, file=f, response_format="xml")
    assert "response_format" in info.value.message

    with open(clips[0], "rb") as f, pytest.raises(openai.NotFoundError) as info:
        client.audio.transcriptions.create(model="whisper-2", file=f)
    assert info.value.code == "model_not_found"
    assert info.value.body["message"] == (
        f"The model 'whisper-2' does not exist; this server serves '{MODEL_ID}', 'whisper-1'."
    )


def test_two_clients_at_once_queue_and_both_get_their_answer(server, transcribed, counted, clips):
    expected = [_text(transcribed(clip)[0]) for clip in clips]
    results, errors = [None, None], []

    def ask(i):
        try:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
            with open(clips[i], "rb") as f:
                results[i] = client.audio.transcriptions.create(model=MODEL_ID, file=f).text
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    counted.most = 0
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and results == expected
    assert counted.most == 1  # the second waited for the first: one inference at a time


def test_ctranslate2_export_is_served(tiny_model_dir, tiny_adapter, tmp_path, clips):
    pytest.importorskip("faster_whisper")
    from whisper_tune.errors import UserError
    from whisper_tune.export import export_ct2
    from whisper_tune.inference.ct2 import load_ct2, transcribe_audio_ct2

    ct2 = export_ct2(str(tiny_model_dir), tmp_path / "ct2", quantization="int8", adapter=str(tiny_adapter))
    hotwords = "पुणे नाशिक"  # faster-whisper's hotwords, for every request
    engine = load_engine(model=str(ct2), language="mr", hotwords=hotwords)
    assert engine.kind == "ctranslate2"
    live = LiveServer(build_app(engine, LIMITS, model_id="ct2"))  # no key: none needed
    try:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=120)
        with open(clips[0], "rb") as f:
            text = client.audio.transcriptions.create(model="ct2", file=f).text
    finally:
        live.stop()
    model = load_ct2(ct2)
    segments, _ = transcribe_audio_ct2(model, load_audio(clips[0]), "mr", hotwords=hotwords)
    assert text == _text(segments)
    direct_segments, _ = model.transcribe(load_audio(clips[0]), language="mr", hotwords=hotwords, temperature=[0.0])
    plain, _ = model.transcribe(load_audio(clips[0]), language="mr", temperature=[0.0])
    assert [s.tokens for s in direct_segments] != [s.tokens for s in plain]  # the hotwords reach the decoder
    with pytest.raises(UserError, match="--hotwords is faster-whisper's: it needs a CTranslate2 model"):
        load_engine(model=str(tiny_model_dir), hotwords=hotwords)


def test_a_file_over_30_s_gives_what_transcribe_gives(engine, tiny_adapter, clips, tmp_path):
    """The server and ``whisper-tune transcribe`` decode through one engine with one default
    (issue 26): the same long file gives the same text and segments from both."""
    import json

    import numpy as np
    import soundfile as sf

    from whisper_tune.cli import main

    speech = [load_audio(c) for c in clips]
    pause = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([part for _ in range(20) for part in (speech[_ % 2], pause)])[: 16000 * 42]
    assert audio.size > 16000 * 30
    long = tmp_path / "long.wav"
    sf.write(str(long), audio, 16000)
    assert (
        main(["transcribe", str(long), "--adapter", str(tiny_adapter), "--format", "json", "--out", str(tmp_path)]) == 0
    )
    cli = json.loads((tmp_path / "long.json").read_text(encoding="utf-8"))
    live = LiveServer(build_app(engine, Limits(max_mb=5.0, max_seconds=120.0), model_id="tiny"))
    try:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=300)
        with open(long, "rb") as f:
            served = client.audio.transcriptions.create(model="tiny", file=f, response_format="verbose_json")
    finally:
        live.stop()
    assert served.text == cli["text"]
    assert [(s.start, s.end, s.text) for s in served.segments] == [
        (s["start"], s["end"], s["text"]) for s in cli["segments"]
    ]
    assert cli["segments"][-1]["end"] > 30.0  # more than one window was decoded


def _post(server, fields: list[tuple[str, str]], clip: Path, timeout: float = 60):
    import httpx

    with open(clip, "rb") as f:
        data: dict[str, list[str]] = {}
        for name, value in fields:
            data.setdefault(name, []).append(value)
        return httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            data=data,
            files={"file": (clip.name, f.read())},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=timeout,
        )


@pytest.mark.parametrize(
    "fields, param, says",
    [
        ([("beam_size", "100000")], "beam_size", "'beam_size' must be a whole number from 1 to 10, not '100000'"),
        ([("beam_size", "0")], "beam_size", "from 1 to 10"),
        ([("no_speech_threshold", "nan")], "no_speech_threshold", "a number from 0 to 1, not 'nan'"),
        ([("logprob_threshold", "-inf")], "logprob_threshold", "a number from -1000 to 0"),
        ([("compression_ratio_threshold", "1e300")], "compression_ratio_threshold", "from 0 to 1000"),
        ([("best_of", "5")], "best_of", "best_of 5 is not offered"),
        ([("temperature", "0"), ("temperature", "0.4")], "temperature", "'temperature' was sent 2 times; send it once"),
        ([("temperature", "0,0.2,0.4")], "temperature", "temperature must be a number from 0 to 1"),
        ([("timestamp_granularities[]", "word")], "timestamp_granularities[]", "needs response_format=verbose_json"),
        ([("vad_filter", "maybe")], "vad_filter", "'vad_filter' must be true or false, not 'maybe'"),
        ([("timestamp_granularities[]", "char")], "timestamp_granularities[]", "unknown timestamp granularity"),
    ],
)
def test_every_numeric_field_is_bounded_and_what_is_not_offered_is_a_400(server, counted, clips, fields, param, says):
    """beam_size=100000 once tried to allocate 38 GB (HTTP 500); word timestamps were once ignored."""
    counted.most = 0
    response = _post(server, [("model", MODEL_ID), *fields], clips[0])
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == param and says in error["message"], error
    assert "\n" not in error["message"] and counted.most == 0  # one line, before any inference


def test_segment_granularity_and_best_of_1_are_accepted(tmp_path):
    live = LiveServer(build_app(SlowEngine(0.0), LIMITS, model_id="slow"))
    try:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)
        with open(write_tone(tmp_path / "a.wav"), "rb") as f:
            result = client.audio.transcriptions.create(
                model="slow",
                file=f,
                response_format="verbose_json",
                timestamp_granularities=["segment"],
                extra_body={"best_of": 1},
            )
    finally:
        live.stop()
    assert result.duration == 1.0 and result.text == ""


def test_a_flac_bomb_is_413_and_a_concatenated_mp3_is_not_cut(server, tmp_path):
    from test_audio import _mp3, write_silence

    bomb = write_silence(tmp_path / "bomb.flac", seconds=15, sr=384000, channels=8)  # 15 s passes the 20 s limit
    assert bomb.stat().st_size < 100_000  # and the 1 MB one
    response = _post(server, [("model", MODEL_ID)], bomb)
    error = response.json()["error"]
    assert response.status_code == 413 and error["code"] == "file_too_large", error
    assert error["message"] == (
        "this audio is too large to decode: 8 channels at 384 kHz; at most 8 channels at 192 kHz are read"
    )

    joined = tmp_path / "joined.mp3"  # 1 s + 60 s: soundfile alone reads 1 s and the server said 200
    joined.write_bytes(_mp3(tmp_path / "a.mp3", 1, 440) + _mp3(tmp_path / "b.mp3", 60, 300))
    response = _post(server, [("model", MODEL_ID)], joined)
    error = response.json()["error"]
    assert response.status_code == 400
    assert error["message"] == "the audio is more than 21 s long; this app takes at most 20 s"


def test_errors_never_show_the_servers_temp_paths(server, tmp_path):
    bad = tmp_path / "notes.mp3"
    bad.write_bytes(b"these are not the sounds you are looking for" * 50)
    message = _post(server, [("model", MODEL_ID)], bad).json()["error"]["message"]
    assert message.startswith("cannot read this audio") and "whisper-tune-api" not in message and "/tmp" not in message
    assert "the upload" in message or "ffmpeg" in message


class SlowEngine(Engine):
    """Says nothing after ``seconds``, and counts its calls: the queue without a model."""

    kind = "slow"

    def __init__(self, seconds: float):
        super().__init__("slow", None, "transcribe")
        self.seconds, self.calls = seconds, 0

    def transcribe(self, audios, language=None, task=None, prompt=None, decoding=None, batch_size=16, **options):
        self.calls += 1
        time.sleep(self.seconds)
        return [([], "en") for _ in audios]


def test_after_sigterm_requests_whose_clients_left_are_dropped(tmp_path):
    """Three uploads: the first is decoding-then-inferring when the other two clients give up
    and the server is told to stop (what uvicorn does on SIGTERM). The two are dropped instead
    of each running a 3 s inference for nobody, so the server exits after the first."""
    import httpx

    clip = write_tone(tmp_path / "a.wav", seconds=1.0)
    engine = SlowEngine(3.0)
    live = LiveServer(build_app(engine, LIMITS, model_id="slow"))
    answers = []

    def ask(timeout):
        try:
            with open(clip, "rb") as f:
                answers.append(
                    httpx.post(
                        f"{live.url}/v1/audio/transcriptions",
                        data={"model": "slow"},
                        files={"file": ("a.wav", f.read())},
                        timeout=timeout,
                    ).status_code
                )
        except httpx.TimeoutException:
            answers.append("gave up")

    first = threading.Thread(target=ask, args=(30,))
    first.start()
    time.sleep(0.5)
    quitters = [threading.Thread(target=ask, args=(1.0,)) for _ in range(2)]
    for t in quitters:
        t.start()
    for t in quitters:
        t.join()
    start = time.monotonic()
    live.server.should_exit = True  # uvicorn's SIGTERM handler sets this
    first.join(timeout=30)
    live.thread.join(timeout=30)
    assert not live.thread.is_alive() and time.monotonic() - start < 3.0
    assert sorted(answers, key=str) == [200, "gave up", "gave up"] and engine.calls == 1


def test_decodes_run_in_their_slots_and_a_full_queue_is_503_with_the_reason():
    """``DECODE_SLOTS`` uploads decode at once, ``max_waiting`` more wait, the next is told why."""
    import asyncio

    from whisper_tune.api import ApiError, Queue

    running, most = 0, 0

    def decode():
        nonlocal running, most
        running += 1
        most = max(most, running)
        time.sleep(0.3)
        running -= 1
        return "audio"

    async def main():
        queue = Queue(max_waiting=2, slots=2, what="uploads waiting to be decoded")
        jobs = [asyncio.ensure_future(queue.run(decode)) for _ in range(4)]
        await asyncio.sleep(0.05)  # two decoding, two waiting
        with pytest.raises(ApiError) as info:
            await queue.run(decode)
        assert info.value.status == 503 and "too many uploads waiting to be decoded" in info.value.message
        return await asyncio.gather(*jobs)

    assert asyncio.run(main()) == ["audio"] * 4 and most == 2


# ---- several adapters on one base (issue 27 item 1) -----------------------------------


def _alone(adapter: Path):
    """One adapter held unmerged on its base, as the multi-adapter engine holds each; greedy
    (no fallback ramp: the random model would run every temperature of it)."""
    import torch

    from whisper_tune.inference import DecodingOptions, open_engine

    return open_engine(None, str(adapter), device=torch.device("cpu"), merge=False, decoding=DecodingOptions.greedy())


def test_two_adapters_on_one_base_answer_concurrent_requests_each_as_alone(tiny_adapter, other_adapter, clips):
    import torch

    from whisper_tune.inference import DecodingOptions

    adapters = {"mr-run": str(tiny_adapter), "hi-run": str(other_adapter)}
    multi = load_engine(adapters=adapters, device=torch.device("cpu"), decoding=DecodingOptions.greedy())
    assert multi.peft_names == {"mr-run": "default", "hi-run": "adapter1"}  # one base, two adapters
    alone = {"mr-run": _alone(tiny_adapter), "hi-run": _alone(other_adapter)}
    expected = {(name, 0): engine.transcript(load_audio(clips[0])).text for name, engine in alone.items()}
    assert expected["mr-run", 0] != expected["hi-run", 0]  # the adapters say different things
    counted = CountingEngine(multi)
    live = LiveServer(build_app(counted, LIMITS, api_key=KEY, aliases=("house",)))
    asks = [("hi-run", 0), ("mr-run", 0), ("whisper-1", 0), ("house", 0)]
    results, errors = {}, []

    def ask(name, i):
        try:
            client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0, timeout=300)
            with open(clips[i], "rb") as f:
                results[name, i] = client.audio.transcriptions.create(model=name, file=f).text
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=ask, args=a) for a in asks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0, timeout=60)
        listed = {m.id: m for m in client.models.list().data}
        with open(clips[0], "rb") as f, pytest.raises(openai.NotFoundError) as info:
            client.audio.transcriptions.create(model="run", file=f)
    finally:
        live.stop()
    assert not errors and counted.most == 1
    default = {"whisper-1": "mr-run", "house": "mr-run"}  # the first adapter is the default
    assert {key: results[key] for key in asks} == {(n, i): expected[default.get(n, n), i] for n, i in asks}
    assert list(listed) == ["mr-run", "hi-run", "whisper-1", "house"]
    assert (listed["mr-run"].language, listed["hi-run"].language) == ("mr", "hi")
    assert listed["hi-run"].card == "better on held-out clips; same on non-speech" and listed["mr-run"].card is None
    assert info.value.body["message"] == (
        "The model 'run' does not exist; this server serves 'mr-run', 'hi-run', 'whisper-1', 'house'."
    )


def test_adapters_of_different_bases_and_bad_names_are_refused(tiny_adapter, tmp_path):
    import json
    import shutil

    from whisper_tune.api import adapter_ids, serve_api
    from whisper_tune.errors import UserError

    elsewhere = tmp_path / "other"
    shutil.copytree(tiny_adapter, elsewhere)
    meta = json.loads((elsewhere / "whisper_tune.json").read_text())
    (elsewhere / "whisper_tune.json").write_text(json.dumps(meta | {"base": str(tmp_path), "base_relative": None}))
    with pytest.raises(UserError, match="adapters of different bases cannot share one model: a is on .*, b on "):
        load_engine(adapters={"a": str(tiny_adapter), "b": str(elsewhere)})

    assert adapter_ids(["runs/mr/best", "hi=runs/hi/best"]) == {"mr-best": "runs/mr/best", "hi": "runs/hi/best"}
    assert adapter_ids(["runs/mr/best"], model_id="whisper-mr") == {"whisper-mr": "runs/mr/best"}
    with pytest.raises(UserError, match="two adapters are named 'a'"):
        adapter_ids(["a=x", "a=y"])
    with pytest.raises(UserError, match="the name 'a b' must be letters"):
        adapter_ids(["a b=x"])
    with pytest.raises(UserError, match="--model-id names a single model"):
        serve_api(adapter=["a=x", "b=y"], model_id="m")


# ---- streaming (issue 27 item 5) -----------------------------------------------------


def test_stream_true_sends_openais_text_events(client, server, transcribed, clips):
    import httpx

    segments, _ = transcribed(clips[0])
    with open(clips[0], "rb") as f:
        events = list(client.audio.transcriptions.create(model=MODEL_ID, file=f, stream=True))
    assert [e.type for e in events] == ["transcript.text.delta"] * len([s for s in segments if s.text]) + [
        "transcript.text.done"
    ]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == _text(segments)

    response = _post(server, [("model", MODEL_ID), ("stream", "true"), ("response_format", "srt")], clips[0])
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "stream" and "json or text, not srt" in error["message"]
    with open(clips[0], "rb") as f:  # OpenAI's translations do not stream: said, not ignored
        response = httpx.post(
            f"{server.url}/v1/audio/translations",
            data={"model": MODEL_ID, "stream": "true"},
            files={"file": (clips[0].name, f.read())},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert response.status_code == 400 and response.json()["error"]["message"].startswith("stream=true is for trans")


@pytest.fixture(scope="module")
def greedy_engine(tiny_adapter):
    """The adapter merged, greedy: the batched long-form path without the random model's fallbacks."""
    import torch

    from whisper_tune.inference import DecodingOptions

    return load_engine(adapter=str(tiny_adapter), device=torch.device("cpu"), decoding=DecodingOptions.greedy())


def _long_file(clips: list[Path], path: Path, seconds: float = 75.0) -> Path:
    """Speech clips with pauses, ``seconds`` long (three 30 s windows at 75 s), as a WAV file."""
    import numpy as np
    import soundfile as sf

    speech = [load_audio(c) for c in clips]
    pause = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([part for i in range(40) for part in (speech[i % 2], pause)])[: int(16000 * seconds)]
    sf.write(str(path), audio, 16000)
    return path


def test_stream_sends_the_first_words_before_the_last_window_is_decoded(greedy_engine, clips, tmp_path, monkeypatch):
    """A long file streamed a window at a time (``batch_size=1``): the decoding of its last
    window waits until the official client has read a delta, which it can only have if deltas
    go out while decoding goes on; the deltas add up to the text the request gives unstreamed."""
    from whisper_tune.inference import longform

    engine, long = greedy_engine, _long_file(clips, tmp_path / "long.wav")
    last = longform.cut_windows(load_audio(long))[-1][0]
    assert last > 0  # several windows
    first_delta, waited, decode = threading.Event(), [], longform._decode

    def held(model, processor, audios, batch, *args):
        if batch[0].start == last and not waited:
            waited.append(first_delta.wait(timeout=60))
        return decode(model, processor, audios, batch, *args)

    monkeypatch.setattr(longform, "_decode", held)
    live = LiveServer(build_app(engine, Limits(max_mb=5.0, max_seconds=120.0), model_id="tiny", batch_size=1))
    events = []
    try:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=300)
        with open(long, "rb") as f:
            for event in client.audio.transcriptions.create(model="tiny", file=f, stream=True):
                events.append(event)
                first_delta.set()
        with open(long, "rb") as f:
            whole = client.audio.transcriptions.create(model="tiny", file=f).text
    finally:
        live.stop()
    assert waited == [True]  # the last window was decoded after the client had its first words
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1) and len(events) > 2
    assert events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == whole


def test_a_stream_whose_client_leaves_stops_decoding(greedy_engine, clips, tmp_path, monkeypatch):
    """The client reads one delta and closes the stream: the decoding stops at the next group
    of windows (the file's last window is never decoded) and the slot serves the next request."""
    import httpx

    from whisper_tune import api
    from whisper_tune.inference import longform

    engine, long = greedy_engine, _long_file(clips, tmp_path / "long.wav")
    spans = longform.cut_windows(load_audio(long))
    assert len(spans) == 3
    streams, decoded, decode, init = [], [], longform._decode, api.Stream.__init__

    def recorded(self, *args):
        streams.append(self)
        init(self, *args)

    def held(model, processor, audios, batch, *args):
        if batch[0].start == spans[1][0] and streams:  # the second group waits for the client to leave
            assert streams[0].closed.wait(timeout=60)
        decoded.append(batch[0].start)
        return decode(model, processor, audios, batch, *args)

    monkeypatch.setattr(api.Stream, "__init__", recorded)
    monkeypatch.setattr(longform, "_decode", held)
    live = LiveServer(build_app(engine, Limits(max_mb=5.0, max_seconds=120.0), model_id="tiny", batch_size=1))
    try:
        with open(long, "rb") as f:
            body = f.read()
        with httpx.stream(
            "POST",
            f"{live.url}/v1/audio/transcriptions",
            data={"model": "tiny", "stream": "true"},
            files={"file": ("long.wav", body)},
            timeout=120,
        ) as response:
            first = next(line for line in response.iter_lines() if line.startswith("data:"))
        assert '"transcript.text.delta"' in first
        deadline = time.monotonic() + 120
        while not streams[0].work.done() and time.monotonic() < deadline:
            time.sleep(0.2)
        in_stream = list(decoded)
        again = httpx.post(
            f"{live.url}/v1/audio/transcriptions", data={"model": "tiny"}, files={"file": ("a.wav", body)}, timeout=300
        )
    finally:
        live.stop()
    assert streams[0].work.exception().status == api.CLIENT_GONE  # stopped by the listener...
    assert spans[1][0] in in_stream and spans[2][0] not in in_stream  # ...before the last window
    assert again.status_code == 200 and spans[2][0] in decoded  # the slot was free again


def _inside(words, segments, duration):
    """Each word inside a segment and the file, in order."""
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(0.0 <= w.start <= w.end <= duration + 1e-3 for w in words)
    for w in words:
        assert any(s.start <= w.start and w.end <= s.end for s in segments), w


def test_verbose_json_gives_words_and_segments(client, clips):
    """timestamp_granularities[]: word and segment together, or words alone (no segments, as
    OpenAI's API answers); words need verbose_json."""
    with open(clips[0], "rb") as f:
        both = client.audio.transcriptions.create(
            model=MODEL_ID, file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert both.segments and both.words
    _inside(both.words, both.segments, both.duration)
    assert " ".join(w.word for w in both.words) == " ".join(both.text.split())
    with open(clips[0], "rb") as f:
        alone = client.audio.transcriptions.create(
            model=MODEL_ID, file=f, response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert [w.model_dump() for w in alone.words] == [w.model_dump() for w in both.words]
    assert getattr(alone, "segments", None) is None
    with open(clips[0], "rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model=MODEL_ID, file=f, timestamp_granularities=["word"])
    assert "verbose_json" in info.value.message


def test_vad_filter_field_keeps_times_on_the_uploads_timeline(client, clips, tmp_path):
    """vad_filter=true (faster-whisper's name) on an upload with 8 s of silence before the
    speech: segments and words start after the silence, inside the file."""
    import soundfile as sf

    audio = load_audio(clips[0])
    padded = tmp_path / "padded.wav"
    sf.write(str(padded), np.concatenate([np.zeros(8 * 16000, np.float32), audio]), 16000)
    with open(padded, "rb") as f:
        out = client.audio.transcriptions.create(
            model=MODEL_ID,
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            extra_body={"vad_filter": "true"},
        )
    assert out.segments and out.segments[0].start >= 7.0 and out.segments[-1].end <= out.duration
    _inside(out.words, out.segments, out.duration)
