"""``whisper-tune api``: an OpenAI-compatible speech-to-text server for a local model.

Any program written for OpenAI's audio API (the ``openai`` client, curl scripts, subtitle
tools) can point its base URL at this server and use a fine-tuned model instead:
``POST /v1/audio/transcriptions``, ``POST /v1/audio/translations`` (json, text, srt, vtt,
verbose_json; ``stream=true`` for server-sent text events), ``GET /v1/models`` and
``GET /health``, with OpenAI's error bodies.

Why it is built this way:

* FastAPI + uvicorn (both already installed with Gradio) parse HTTP and multipart forms;
  nothing here reads raw HTTP.
* One model per process, loaded before the server accepts requests: an adapter folder (base
  + LoRA, merged on load), a merged transformers folder, or a CTranslate2 export run on
  faster-whisper. Decoding goes through the same ``inference.Engine`` as ``whisper-tune
  transcribe``, with the same defaults, so a request gives exactly what it gives.
* Several adapters of one base (``--adapter NAME=PATH`` repeated, or ``--adapters-dir``: each
  run of a folder, named for its run) share one copy of the base,
  held unmerged (``open_engine(adapters=...)``); a request's ``model`` names the adapter,
  and the switch happens inside the one-at-a-time queue, so requests for different adapters
  never see each other's weights. ``whisper-1`` and ``--alias`` names mean the first.
* ``stream=true`` answers with OpenAI's server-sent events: a ``transcript.text.delta`` per
  segment as soon as it is decoded (:class:`Stream`: the batched long-form loop reports
  each group of ``--batch-size`` windows, so a long file's first words arrive while the rest
  decodes), then ``transcript.text.done``. The text is that of the same request unstreamed.
  A back-end that decodes a file whole (a prompt, several adapters, CTranslate2) sends its
  deltas at the end.
* One inference at a time: requests wait on an asyncio lock (bounded, 503 beyond
  ``max_queue`` waiting) and the model runs in a worker thread, so concurrent clients queue
  instead of running the GPU out of memory, and the event loop keeps answering meanwhile.
  Decoding an upload has its own few slots (``decode_slots``, the same bound on waiting), so
  N uploads at once never decode N files at once. A request whose client has gone while it
  waits is dropped before its decode or inference starts (after SIGTERM too, when uvicorn
  finishes what is queued).
* Safe defaults: binds 127.0.0.1 (a warning for any other address), an optional API key
  compared in constant time, an upload size limit enforced from Content-Length and again
  while the body streams in (a 2 GB body is refused, never buffered), and the duration
  limit read from the file header before decoding where the format allows; the decoder
  refuses rates above 192 kHz and more than 8 channels from the header (413), and decodes in
  blocks, so memory follows the 16 kHz output (``benchmarks/audio_memory_probe.py``).
* Every form field is bounded (beam_size 1-10, thresholds in range, each field once) and
  what is not offered (best_of above 1) is a 400 saying so, never ignored.
* ``timestamp_granularities[]=word`` (verbose_json) times each word by cross-attention
  alignment (``inference/words.py``); ``vad_filter`` (faster-whisper's name) switches Silero
  VAD on or off for a request; the server's default (``--vad``) filters files over 30 s.
"""

# No `from __future__ import annotations`: FastAPI reads the `Request` annotations of the
# handlers, which are imported inside build_app (FastAPI stays optional for the package).

import asyncio
import hmac
import json
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .errors import UserError
from .inference import Engine, Segment, Transcript, get_writer
from .run import SERVED_NAME, adapter_ids, adapters_in, card_headline, default_model_id
from .uploads import Limits, UploadRejected, check_upload

log = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FORM_SLACK_BYTES = 1 << 20  # room for the form's other fields and multipart headers
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DECODE_SLOTS = 2  # uploads decoded at once; each holds at most a block of the file and its 16 kHz output
MAX_BEAM_SIZE = 10  # openai's CLI uses 5; each beam is one more decoder pass per token
CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection
API_KEY_ENV = "WHISPER_TUNE_API_KEY"
DEFAULT_ALIASES = ("whisper-1",)  # OpenAI's model id, which applications written for it send
STREAM_FORMATS = ("json", "text")  # response formats that stream=true may ask for (as OpenAI's API)


# ---- the model ----------------------------------------------------------------------


def load_engine(
    model: str | None = None,
    adapter: str | None = None,
    language: str | None = None,
    device=None,
    decoding=None,
    adapters: dict[str, str] | None = None,
    hotwords: str | None = None,
    merge_busiest: bool = True,
    vad=None,
):
    """The server's engine for ``--model``/``--adapter`` (``inference.open_engine``: a
    CTranslate2 folder runs on faster-whisper, anything else loads with the adapter merged;
    ``adapters``, name -> folder: several on one base, switched by name, the busiest decoded
    from a merged copy where memory allows unless ``merge_busiest`` is off).
    ``decoding`` (``DecodingOptions``) is the server's default decoding (None: that of
    ``whisper-tune transcribe``, so a request gives what it gives); ``vad``
    (``inference.VadOptions``): the speech filter a request gets unless it sends ``vad_filter``."""
    from .inference import DecodingOptions, open_engine
    from .inference.options import FILE_DECODING

    decoding = decoding or DecodingOptions(**FILE_DECODING)
    return open_engine(
        model,
        adapter,
        device=device,
        language=language,
        decoding=decoding,
        adapters=adapters,
        hotwords=hotwords,
        merge_busiest=merge_busiest,
        vad=vad,
    )


@dataclass(frozen=True)
class ServedModel:
    """One id ``GET /v1/models`` lists and a request's ``model`` may name."""

    id: str
    adapter: str | None  # the engine's adapter name (None: the engine as opened)
    language: str | None
    card: str | None = None  # the adapter's report card headline (card.json), where it has one


def served_models(engine: Engine, model_id: str) -> list[ServedModel]:
    """The engine's adapters by name, or its one model as ``model_id``."""
    if not engine.adapters:
        return [ServedModel(model_id, None, engine.language)]
    return [ServedModel(a.name, a.name, a.language, card_headline(a.path)) for a in engine.adapters.values()]


class Models:
    """The served ids and the aliases of the first (the default)."""

    def __init__(self, served: list[ServedModel], aliases=DEFAULT_ALIASES):
        self.served = {m.id: m for m in served}
        self.default = served[0]
        self.aliases = {a: self.default.id for a in aliases if a not in self.served}

    def resolve(self, name: str) -> ServedModel:
        """The model a request names, or 404 listing what this server serves."""
        found = self.served.get(self.aliases.get(name, name))
        if found is None:
            listed = ", ".join(f"'{i}'" for i in [*self.served, *self.aliases])
            raise ApiError(
                404, f"The model '{name}' does not exist; this server serves {listed}.", code="model_not_found"
            )
        return found

    def cards(self, created: int) -> list[dict]:
        listed = [_model_card(m, created) for m in self.served.values()]
        return listed + [
            _model_card(self.served[target], created, alias) | {"alias_of": target}
            for alias, target in self.aliases.items()
        ]


# ---- errors --------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BodyTooLarge(Exception):
    """Raised from inside the body stream once it passes the limit, to stop reading it."""


def _error_response(error: ApiError):
    from fastapi.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _install_error_handlers(app) -> None:
    """Every error, ours or the framework's (404 route, 405, bad form), in OpenAI's shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def on_api_error(request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}"
        return _error_response(ApiError(exc.status_code, message))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, exc: RequestValidationError):
        return _error_response(ApiError(400, f"invalid request: {exc.errors()}"))

    @app.exception_handler(Exception)
    async def on_bug(request, exc: Exception):
        log.exception("whisper-tune api: request failed")
        return _error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))


# ---- requests ------------------------------------------------------------------------


def check_api_key(authorization: str | None, api_key: str | None) -> None:
    """401 unless the ``Authorization: Bearer KEY`` header holds the key (constant-time
    comparison, so response times do not leak how much of a guess was right)."""
    if not api_key:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(
            401, "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.", code="invalid_api_key"
        )
    if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")


def _too_large(limits: Limits, what: str = "the request body is too large") -> ApiError:
    return ApiError(413, f"{what}; this server takes at most {limits.max_mb:g} MB", param="file", code="file_too_large")


def _limited_receive(receive, max_bytes: int):
    """``receive`` that counts body bytes and stops the read past ``max_bytes``: the limit
    holds for chunked uploads and lying Content-Length headers too."""
    seen = 0

    async def limited():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise BodyTooLarge()
        return message

    return limited


async def read_form(request, limits: Limits):
    """The multipart form, refused with 413 before (Content-Length) or while (byte count)
    it streams in. Starlette spools file parts to disk past 1 MB, so memory stays small."""
    from starlette.requests import Request

    max_bytes = int(limits.max_mb * 2**20) + FORM_SLACK_BYTES
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(limits, f"the upload is {int(declared) / 2**20:.1f} MB")
    limited = Request(request.scope, _limited_receive(request.receive, max_bytes))
    try:
        return await limited.form(max_files=1, max_fields=32)
    except BodyTooLarge:
        raise _too_large(limits) from None


@dataclass
class Options:
    """A request's form fields, checked."""

    model: ServedModel
    response_format: str
    language: str | None
    prompt: str | None
    decoding: object  # inference.DecodingOptions
    stream: bool = False
    granularities: tuple[str, ...] = ("segment",)  # verbose_json's timestamp_granularities[]
    vad_filter: bool | None = None  # faster-whisper's name; None: the server's --vad


# Fields beyond OpenAI's (openai/whisper's names): (type, lowest, highest), or bool. The beam
# costs memory and time, so it is bounded tightly; a threshold costs nothing, so its bounds
# only keep out NaN, infinities and nonsense, and an extreme value switches that check off.
DECODING_FIELDS = {
    "beam_size": (int, 1, MAX_BEAM_SIZE),
    "compression_ratio_threshold": (float, 0.0, 1000.0),  # openai: 2.4
    "logprob_threshold": (float, -1000.0, 0.0),  # openai: -1
    "no_speech_threshold": (float, 0.0, 1.0),  # openai: 0.6
    "condition_on_previous_text": (bool, None, None),
}
STREAM_FIELD = "stream"  # OpenAI's: true answers with server-sent events
VAD_FIELD = "vad_filter"  # faster-whisper's: true decodes only the speech, false all of it
LIST_FIELDS = ("timestamp_granularities[]", "timestamp_granularities", "include[]")  # may repeat
GRANULARITIES = ("segment", "word")


def check_fields(form) -> None:
    """400 for what this server does not do, rather than ignoring it: a field sent twice (which
    value counts would be a guess), an unknown timestamp granularity, ``best_of`` above 1."""
    counts: dict[str, int] = {}
    for name, _ in form.multi_items():
        counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        if count > 1 and name not in LIST_FIELDS:
            raise ApiError(400, f"'{name}' was sent {count} times; send it once", param=name)
    for name in LIST_FIELDS[:2]:
        for value in form.getlist(name):
            value = value.strip() if isinstance(value, str) else value
            if value not in GRANULARITIES:
                raise ApiError(400, f"unknown timestamp granularity '{value}': use segment or word", param=name)
    best_of = _text_field(form, "best_of")
    if best_of is not None and best_of != "1":
        raise ApiError(
            400, f"best_of {best_of} is not offered: each fallback temperature draws one sample", param="best_of"
        )


def parse_options(form, models: Models | str, defaults=None, task: str = "transcribe") -> Options:
    """Check the form's fields in OpenAI's order of complaints: 400 for a bad value, 404 for
    a model this server does not serve (``models``: the served ids, or the one id).
    ``temperature`` starts the fallback ramp (as in OpenAI's API: 0 rises on fallback); the
    decoding fields change ``defaults`` (the server's ``DecodingOptions``) for this request
    only. ``stream`` is for transcriptions, as json or text."""
    from .processor import resolve_language

    if isinstance(models, str):
        models = Models([ServedModel(models, None, None)])
    check_fields(form)
    name = _text_field(form, "model")
    if not name:
        raise ApiError(400, "you must provide a model parameter (see GET /v1/models)", param="model")
    model = models.resolve(name)
    fmt = _text_field(form, "response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(
            400, f"unknown response_format '{fmt}': use one of {', '.join(RESPONSE_FORMATS)}", param="response_format"
        )
    stream = bool(_typed_field(form, STREAM_FIELD, bool))
    if stream and task != "transcribe":
        raise ApiError(400, "stream=true is for transcriptions: translations answer whole", param=STREAM_FIELD)
    if stream and fmt not in STREAM_FORMATS:
        raise ApiError(
            400, f"stream=true sends text events: use response_format json or text, not {fmt}", param=STREAM_FIELD
        )
    language = _text_field(form, "language")
    if language:
        try:
            language = resolve_language(language)
        except UserError as e:
            raise ApiError(400, str(e), param="language") from None
    decoding = _decoding(form, defaults)
    granularities = _granularities(form, fmt)
    vad_filter = _typed_field(form, VAD_FIELD, bool)
    prompt = _text_field(form, "prompt") or None
    return Options(model, fmt, language or None, prompt, decoding, stream, granularities, vad_filter)


def _granularities(form, fmt: str) -> tuple[str, ...]:
    """``timestamp_granularities[]`` (OpenAI's: word, segment or both; for verbose_json only)."""
    asked = [v.strip() for name in LIST_FIELDS[:2] for v in form.getlist(name)]
    if asked and fmt != "verbose_json":
        raise ApiError(
            400, "timestamp_granularities needs response_format=verbose_json", param="timestamp_granularities[]"
        )
    return tuple(g for g in GRANULARITIES if g in asked) or ("segment",)


def _decoding(form, defaults):
    """The request's DecodingOptions: the server's, with the fields it sends (400 if bad)."""
    from .inference import DecodingOptions

    options = defaults or DecodingOptions()
    temperature = _text_field(form, "temperature")
    if temperature is not None:
        try:
            value = float(temperature)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise ApiError(400, f"temperature must be a number from 0 to 1, not '{temperature}'", param="temperature")
        options = options.starting_at(value)
    changes = {name: _typed_field(form, name, *bounds) for name, bounds in DECODING_FIELDS.items()}
    try:
        return options.with_fields(**{k: v for k, v in changes.items() if v is not None})
    except UserError as e:
        raise ApiError(
            400, str(e), param=next((k for k, v in changes.items() if v is not None), "temperature")
        ) from None


def _typed_field(form, name: str, kind, lowest=None, highest=None):
    text = _text_field(form, name)
    if text is None:
        return None
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ApiError(400, f"'{name}' must be true or false, not '{text}'", param=name)
        return text.lower() in ("true", "1")
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not lowest <= value <= highest:  # NaN and inf fail the comparison too
        raise ApiError(400, f"'{name}' must be {what} from {lowest:g} to {highest:g}, not '{text}'", param=name)
    return value


def _text_field(form, name: str) -> str | None:
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"'{name}' must be a text field, not a file", param=name)
    return value.strip() if value else None


def _upload(form, limits: Limits):
    """The form's ``file`` part, after the exact size check (413)."""
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "you must provide a file: an audio file as the multipart field 'file'", param="file")
    size = upload.size if upload.size is not None else 0
    if size > limits.max_mb * 2**20:
        raise _too_large(limits, f"the file is {size / 2**20:.1f} MB")
    return upload


def decode_upload(upload, limits: Limits) -> np.ndarray:
    """16 kHz audio of an upload, through ``uploads.check_upload`` (size, header, decoding in
    blocks up to the duration limit); its reasons become 413 (too large to decode) or 400
    errors that name the upload, never the server's temporary path. Blocking: run in a thread."""
    suffix = Path(upload.filename or "").suffix[:12]
    with tempfile.TemporaryDirectory(prefix="whisper-tune-api-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        upload.file.seek(0)
        with open(path, "wb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)
        try:
            return check_upload(path, limits)
        except UploadRejected as e:
            message = str(e).replace(str(path), "the upload").replace(tmp, "")
            if e.too_large:
                raise ApiError(413, message, param="file", code="file_too_large") from None
            raise ApiError(400, message, param="file", code="invalid_audio") from None


# ---- responses -----------------------------------------------------------------------


def language_name(code: str | None) -> str | None:
    """OpenAI reports the language by its English name ("english"), not its code."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code, code) if code else code


def verbose_json(
    transcript: Transcript, task: str, temperature: float, granularities: tuple[str, ...] = ("segment",)
) -> dict:
    """OpenAI's verbose_json, with each segment's window scores as the decoder measured them
    (temperature used, avg_logprob, compression_ratio, no_speech_prob); ``tokens`` stays
    empty, and a score the decoder did not measure reads 0 (``temperature``: the first).
    ``segments`` and ``words`` as ``granularities`` asks (OpenAI's: words alone leaves the
    segments out)."""
    out = {
        "task": task,
        "language": language_name(transcript.language),
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
    }
    if "word" in granularities:
        words = [w for s in transcript.segments for w in s.words or ()]
        out["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in words]
    if "segment" in granularities:
        out["segments"] = [_segment(i, s, temperature) for i, s in enumerate(transcript.segments)]
    return out


def _segment(index: int, segment: Segment, temperature: float) -> dict:
    def score(value):
        return 0.0 if value is None else value

    return {
        "id": index,
        "seek": int(segment.start * 100),
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        "tokens": [],
        "temperature": temperature if segment.temperature is None else segment.temperature,
        "avg_logprob": score(segment.avg_logprob),
        "compression_ratio": score(segment.compression_ratio),
        "no_speech_prob": score(segment.no_speech_prob),
    }


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def render(
    transcript: Transcript, fmt: str, task: str, temperature: float, granularities: tuple[str, ...] = ("segment",)
):
    """The response for one response_format; srt/vtt/text come from the file writers, so the
    API and ``whisper-tune transcribe --format`` write the same bytes."""
    from fastapi.responses import JSONResponse, PlainTextResponse

    if fmt == "json":
        return JSONResponse({"text": transcript.text})
    if fmt == "verbose_json":
        return JSONResponse(verbose_json(transcript, task, temperature, granularities))
    writer = get_writer({"text": "txt"}.get(fmt, fmt))
    return PlainTextResponse(writer.format(transcript), media_type="text/plain; charset=utf-8")


# ---- the app -------------------------------------------------------------------------


class Queue:
    """``slots`` jobs at a time (one inference; a few decodes); at most ``max_waiting`` more
    wait, the rest get 503 saying what the server is busy with."""

    def __init__(self, max_waiting: int, slots: int = 1, what: str = "requests waiting"):
        self.slots = asyncio.Semaphore(slots)
        self.max_waiting = max_waiting
        self.waiting = 0
        self.what = what

    async def run(self, fn, *args, gone=None):
        """``fn(*args)`` in a worker thread once a slot is free. The slot is released when
        the thread finishes, not when the request goes away: a client that disconnects
        mid-inference cannot let a second inference start beside the first. ``gone`` (a
        coroutine function that returns once the client has disconnected) drops the job while
        it waits: nobody would read its answer."""
        if self.waiting >= self.max_waiting:
            raise ApiError(503, f"the server is busy: too many {self.what}; retry later", type="server_error")
        self.waiting += 1
        try:
            await self._acquire(gone)
        finally:
            self.waiting -= 1
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        work.add_done_callback(lambda _: self.slots.release())
        return await asyncio.shield(work)

    async def _acquire(self, gone) -> None:
        if gone is None:
            await self.slots.acquire()
            return
        acquire, watch = asyncio.ensure_future(self.slots.acquire()), asyncio.ensure_future(gone())
        try:
            await asyncio.wait({acquire, watch}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._give_back(acquire)
            raise
        finally:
            watch.cancel()
        if watch.done() and not watch.cancelled():
            self._give_back(acquire)
            raise ApiError(CLIENT_GONE, "the client closed the request while it waited", code="client_gone")

    def _give_back(self, acquire) -> None:
        """Cancel a pending acquire, or release the slot it already took."""

        def release(task):
            if not task.cancelled() and task.exception() is None:
                self.slots.release()

        acquire.cancel()
        acquire.add_done_callback(release)


class Stream:
    """One ``stream=true`` transcription: OpenAI's server-sent events, a
    ``transcript.text.delta`` per segment sent as soon as the decoder has it, then
    ``transcript.text.done``.

    The engine runs in the inference queue as any request does, inside
    ``inference.segments_as_decoded``: the batched long-form loop hands over each group of
    windows' segments as it finishes them (a back-end that decodes a file whole hands over
    nothing, and its segments go out at the end), and the event loop sends them while the rest
    decodes. The deltas are joined as ``Transcript.text`` joins segments, so they add up to the
    done event's text. Errors before the inference starts (a full queue, a client gone while
    waiting) are answered as usual; after, as an ``error`` event, which the official client
    raises. A client that goes away mid-stream stops the decoding at its next group of
    windows, so the slot is not held for nobody."""

    def __init__(self, queue: Queue, job, gone):
        self.loop = asyncio.get_running_loop()
        self.segments: asyncio.Queue = asyncio.Queue()
        self.started = asyncio.Event()
        self.closed = threading.Event()  # set once the response is over: the listener stops the decoding
        self.sent: list[str] = []
        self.work = asyncio.ensure_future(queue.run(self._run, job, gone=gone))
        self.work.add_done_callback(lambda f: f.cancelled() or f.exception())  # read here or in events

    def _run(self, job) -> Transcript:
        """In the worker thread: the job, with its segments reported as they are decoded."""
        from .inference import segments_as_decoded

        self.loop.call_soon_threadsafe(self.started.set)
        with segments_as_decoded(self._heard):
            return job()

    def _heard(self, file: int, segments: list[Segment]) -> None:
        if self.closed.is_set():
            raise ApiError(CLIENT_GONE, "the client closed the stream", code="client_gone")
        self.loop.call_soon_threadsafe(self.segments.put_nowait, segments)

    async def begin(self) -> None:
        """Return once the inference has started; raise what stopped it before then."""
        started = asyncio.ensure_future(self.started.wait())
        await asyncio.wait({started, self.work}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self.work.done() and not self.started.is_set():
            self.work.result()

    async def events(self):
        """The event stream (``StreamingResponse`` sends it; cancelled if the client leaves)."""
        try:
            while True:
                heard = asyncio.ensure_future(self.segments.get())
                await asyncio.wait({heard, self.work}, return_when=asyncio.FIRST_COMPLETED)
                if not heard.done():
                    heard.cancel()
                    break
                for event in self._deltas(heard.result()):
                    yield event
            while not self.segments.empty():
                for event in self._deltas(self.segments.get_nowait()):
                    yield event
            transcript = self.work.result()
            spoken = [s for s in transcript.segments if s.text]
            if [s.text for s in spoken[: len(self.sent)]] == self.sent:
                for event in self._deltas(spoken[len(self.sent) :]):  # what the back-end did not report
                    yield event
            else:
                log.warning("streamed segments differ from the transcript's: the done event holds its text")
            yield _event({"type": "transcript.text.done", "text": transcript.text})
        except ApiError as e:
            yield _event({"type": "error"} | e.body())
        except Exception as e:  # noqa: BLE001 - the status went out with the first byte: say it in the stream
            log.exception("whisper-tune api: streamed request failed")
            error = ApiError(500, f"internal error: {type(e).__name__}", type="server_error")
            yield _event({"type": "error"} | error.body())
        finally:
            self.closed.set()

    def _deltas(self, segments: list[Segment]):
        for segment in segments:
            if segment.text:
                yield _event({"type": "transcript.text.delta", "delta": (" " if self.sent else "") + segment.text})
                self.sent.append(segment.text)


async def stream_response(queue: Queue, job, gone):
    """The ``StreamingResponse`` of a :class:`Stream`, once its inference has started."""
    from fastapi.responses import StreamingResponse

    stream = Stream(queue, job, gone)
    await stream.begin()
    return StreamingResponse(stream.events(), media_type="text/event-stream")


def client_gone(request):
    """A coroutine function that returns once ``request``'s client has disconnected (the body
    is read by then, so ``receive`` has nothing else to say)."""

    async def gone():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return gone


def build_app(
    engine: Engine,
    limits: Limits | None = None,
    api_key: str | None = None,
    model_id: str | None = None,
    max_queue: int = 32,
    decode_slots: int = DECODE_SLOTS,
    aliases: tuple[str, ...] = (),
    batch_size: int = 16,
):
    """The FastAPI app around a loaded engine (tests build it directly and serve it): its
    adapters by name where it was opened with names (else its one model as ``model_id``),
    with ``whisper-1`` and ``aliases`` for the first. ``batch_size``: the 30 s windows of a
    file decoded together (``transcribe --batch-size``; a stream's deltas come a batch at a time)."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.routing import APIRouter

    limits = limits or Limits()
    model_id = model_id or default_model_id(engine.name, None)
    models = Models(served_models(engine, model_id), (*DEFAULT_ALIASES, *aliases))
    queue = Queue(max_queue)
    decoding = Queue(max_queue, decode_slots, "uploads waiting to be decoded")
    app = FastAPI(title="whisper-tune api", docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(app)

    async def authorized(request: Request) -> None:
        check_api_key(request.headers.get("authorization"), api_key)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])

    async def handle(request: Request, task: str):
        form = await read_form(request, limits)
        gone = client_gone(request)
        try:
            options = parse_options(form, models, engine.decoding, task)
            upload = _upload(form, limits)
            audio = await decoding.run(decode_upload, upload, limits, gone=gone)
        finally:
            await form.close()
        job = _job(engine, audio, options, task, batch_size)
        if options.stream:
            return await stream_response(queue, job, gone)
        transcript = await queue.run(job, gone=gone)
        log.info("%s %.1f s of audio in %.2f s (%s)", task, transcript.duration, transcript.seconds, options.model.id)
        temperature = options.decoding.temperature[0]
        return render(transcript, options.response_format, task, temperature, options.granularities)

    @v1.post("/audio/transcriptions")
    async def transcriptions(request: Request):
        return await handle(request, "transcribe")

    @v1.post("/audio/translations")
    async def translations(request: Request):
        return await handle(request, "translate")

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": models.cards(engine.created)}

    @v1.get("/models/{name}")
    async def model(name: str):
        found = models.resolve(name)
        return _model_card(found, engine.created, name if name != found.id else None)

    app.include_router(v1)

    @app.get("/health")
    async def health():
        waiting = queue.waiting + decoding.waiting
        return {"status": "ok", "model": models.default.id, "engine": engine.kind, "waiting": waiting}

    return app


def _job(engine: Engine, audio, options: Options, task: str, batch_size: int):
    """One request's work for the inference queue: the engine's transcript of ``audio`` with
    the request's adapter, language, prompt, decoding, speech filter and granularities."""
    return partial(
        engine.transcript,
        audio,
        adapter=options.model.adapter,
        language=options.language,
        task=task,
        prompt=options.prompt,
        decoding=options.decoding,
        batch_size=batch_size,
        vad_filter=options.vad_filter,
        word_timestamps="word" in options.granularities,
    )


def _model_card(model: ServedModel, created: int, alias: str | None = None) -> dict:
    """OpenAI's model object, plus the language the model decodes by default and its report
    card headline (None where it has none)."""
    card = {"id": alias or model.id, "object": "model", "created": created, "owned_by": "whisper-tune"}
    return card | {"language": model.language, "card": model.card}


def serve_api(
    model: str | None = None,
    adapter: str | list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    api_key: str | None = None,
    language: str | None = None,
    model_id: str | None = None,
    decoding=None,
    aliases: tuple[str, ...] = (),
    hotwords: str | None = None,
    adapters_dir: str | None = None,
    batch_size: int = 16,
    vad=None,
) -> None:
    """Load the model once, then serve until interrupted; ``decoding`` (``DecodingOptions``)
    is the default a request's fields start from. ``adapter``: one folder, or ``--adapter``
    values (``NAME=PATH`` or ``PATH``), several sharing one base; ``adapters_dir``: a folder
    of run folders, each run's adapter named for its run (``run.adapters_in``)."""
    try:
        import uvicorn
        from fastapi import FastAPI  # noqa: F401
    except ImportError:
        raise UserError("the API server needs FastAPI and uvicorn: pip install 'whisper-tune[api]'") from None
    if batch_size < 1:
        raise UserError(f"--batch-size must be 1 or more, not {batch_size}")
    specs = [adapter] if isinstance(adapter, str) else list(adapter or [])
    specs += adapters_in(adapters_dir) if adapters_dir else []
    if not model and not specs:
        raise UserError("give --model (a merged or CTranslate2 folder, or a base) and/or --adapter/--adapters-dir")
    if model_id and len(specs) > 1:
        raise UserError("--model-id names a single model: with several adapters, name each as --adapter NAME=PATH")
    adapters = adapter_ids(specs, model, model_id) if specs else None
    for alias in aliases:
        if adapters and alias in adapters:
            raise UserError(f"--alias {alias} is already the name of an adapter")
        if not SERVED_NAME.match(alias):
            raise UserError(f"--alias {alias}: a name of letters, digits, '.', '_', '-' or ':'")
    engine = load_engine(model, None, language, decoding=decoding, adapters=adapters, hotwords=hotwords, vad=vad)
    model_id = model_id or default_model_id(model, None)
    app = build_app(engine, limits or Limits(), api_key, model_id, aliases=tuple(aliases), batch_size=batch_size)
    if host not in LOOPBACK:
        print(
            f"whisper-tune api: listening on {host}: anyone who can reach this address can use it"
            + ("" if api_key else f" (no API key: set --api-key or {API_KEY_ENV})")
        )
    ids = ", ".join(f"'{m.id}'" for m in served_models(engine, model_id))
    print(f"whisper-tune api: {ids} ({engine.describe()}) on http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="info")


# ---- command line (registered by cli.py as `whisper-tune api`) ------------------------
