"""One engine, opened once: :func:`open_engine` picks the back-end for a model and every
caller decodes through the :class:`Engine` it returns (faster-whisper's shape: one options
type, one result type; the long-form strategies above the window decoders, as in
openai/whisper).

Back-ends: the transformers model (the fast batched decoder of ``greedy.py`` where it
applies, else ``generate`` with the fallback of ``generate.py``), a CTranslate2 export on
faster-whisper (``ct2.py``) and, to check exports, a whisper.cpp file (``ggml.py``).
Within the transformers engine the one rule that says which decoder runs is here:
:meth:`TransformersEngine.batched` for transcription (files of any length) and
:meth:`TransformersEngine.fast_clips` for evaluation (clips of at most 30 s). ``transcribe``,
``evaluate``, ``api``, ``serve``, ``parity`` and ``bench`` all go through them, so the same
file and settings give the same text in each.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import N_SAMPLES, duration
from ..encoder_window import use_encoder_window
from ..errors import UserError
from ..features import log_mel
from ..logmel import N_FRAMES
from ..modeling import input_dtype, quiet_generate
from .ct2 import greedy_text_ct2, is_ct2_model, load_ct2, transcribe_audio_ct2
from .fusion import fusion_kwargs
from .generate import decoding_session, detect_language, transcribe_audio
from .greedy import decoder_for, prompt_ids, supports_fast_path
from .longform import transcribe_batched
from .merged import MergedCopy
from .options import MAX_NEW_TOKENS, DecodingOptions
from .results import Segment, Transcript
from .vad import SpeechMap, VadOptions, speech_spans
from .words import add_words, alignment_heads

STRATEGIES = ("auto", "batched", "sequential")  # how the transformers engine decodes files of any length
CLIP_DECODERS = ("auto", "fast", "fast-compiled", "generate")  # ... and clips of at most 30 s (evaluation)


@dataclass(frozen=True)
class Adapter:
    """One adapter an engine serves by name: its folder, and the language and task it
    decodes with when a call names none (its ``whisper_tune.json``, or the engine's)."""

    name: str
    path: str
    language: str | None
    task: str


class Engine:
    """A loaded model and the ways it decodes. ``language`` None: detected per file;
    ``decoding``: the options a call that passes none uses; ``vad``: the speech filter a call
    that does not say ``vad_filter`` uses (None: none; ``vad.VadOptions.longer_than_s``: only
    on files longer than that)."""

    kind = ""

    def __init__(
        self,
        name: str,
        language: str | None,
        task: str,
        decoding: DecodingOptions | None = None,
        vad: VadOptions | None = None,
    ):
        self.name, self.language, self.task = name, language, task
        self.decoding = decoding or DecodingOptions()
        self.vad = vad
        self.created = int(time.time())
        self.adapters: dict[str, Adapter] = {}  # by name, where open_engine was given names
        self.folder: str | None = None  # the adapter folder decoding now (its alignment heads)

    @contextlib.contextmanager
    def using(self, adapter: str | None):
        """Inside the block, calls decode with the adapter of that name (None: as opened), with
        its language and task as the defaults. One call at a time: the switch is the engine's
        state (the API runs one inference at a time and switches inside it)."""
        if adapter is None:
            yield
            return
        if adapter not in self.adapters:
            raise UserError(f"no adapter named {adapter!r}: this engine has {', '.join(self.adapters) or 'none'}")
        chosen = self.adapters[adapter]
        saved = self.language, self.task, self.folder
        self._activate(chosen)
        self.language, self.task, self.folder = chosen.language, chosen.task, chosen.path
        try:
            yield
        finally:
            self.language, self.task, self.folder = saved

    def _activate(self, adapter: Adapter) -> None:
        """Switch the weights to ``adapter`` (an engine of one model has nothing to switch)."""

    def transcribe(
        self,
        audios: list[np.ndarray],
        language: str | None = None,
        task: str | None = None,
        prompt: str | None = None,
        decoding: DecodingOptions | None = None,
        batch_size: int = 16,
        vad_filter: bool | None = None,
        word_timestamps: bool = False,
    ) -> list[tuple[list[Segment], str]]:
        """(segments with time stamps, language) per 16 kHz clip of any length, on the clip's
        own timeline. ``vad_filter`` (faster-whisper's name): True decodes only the speech
        (the engine's ``vad`` parameters, else the defaults), False all of it, None as the
        engine's ``vad`` says. ``word_timestamps``: each segment's words, timed."""
        maps = [self._speech_map(a, vad_filter) for a in audios]
        todo = [i for i, m in enumerate(maps) if m is None or m.spans]  # a file without speech is not decoded
        decoded = self._decode_files(
            [maps[i].cut(audios[i]) if maps[i] else audios[i] for i in todo],
            language,
            task,
            prompt,
            decoding,
            batch_size,
            word_timestamps,
        )
        out = [([], self._language(language)) for _ in audios]
        for i, (segments, used) in zip(todo, decoded):
            out[i] = ([maps[i].segment(s) for s in segments] if maps[i] else segments), used
        return out

    def _speech_map(self, audio: np.ndarray, vad_filter: bool | None) -> SpeechMap | None:
        """Where VAD applies to ``audio``: its speech spans (see ``transcribe``)."""
        if vad_filter is False or (vad_filter is None and not (self.vad and self.vad.applies(audio))):
            return None
        return SpeechMap(speech_spans(audio, self.vad or VadOptions()))

    def _decode_files(
        self, audios, language, task, prompt, decoding, batch_size, word_timestamps
    ) -> list[tuple[list[Segment], str]]:
        """The back-end's ``transcribe``, on the audio VAD kept."""
        raise NotImplementedError

    def detect_languages(self, audios: list[np.ndarray]) -> list[str]:
        """Whisper's language guess for each clip, from its first 30 s, whatever language
        the engine was opened with."""
        raise NotImplementedError

    def batches(self, audio: np.ndarray, decoding: DecodingOptions | None = None, prompt: str | None = None) -> bool:
        """Whether ``audio`` is decoded together with others (``files.transcribe_files`` then
        groups files; otherwise it decodes and reports them one by one)."""
        return False

    def transcript(self, audio: np.ndarray, path: str = "upload", adapter: str | None = None, **options) -> Transcript:
        """One clip's Transcript, timed (the API's unit of work), by the adapter named
        ``adapter`` (None: the engine as opened)."""
        start = time.perf_counter()
        with self.using(adapter):
            ((segments, used),) = self.transcribe([audio], **options)
        return Transcript(path, used, duration(audio), segments, time.perf_counter() - start)

    def decode_clips(
        self,
        audios: list[np.ndarray],
        language: str | None,
        task: str,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        decoding: DecodingOptions | None = None,
    ) -> list[str]:
        """The text of each clip of at most 30 s, as evaluation scores it: no time stamps,
        greedy unless ``decoding`` asks for robust decoding."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (so a timer around decoding is honest)."""

    def reserve(self, batch: int) -> None:
        """Clips will come in batches of up to ``batch`` (a decoder may size itself once)."""

    @contextlib.contextmanager
    def evaluating(self):
        """The model in inference mode inside the block, as it was after."""
        yield

    def describe(self) -> str:
        """The back-end in words, for logs and reports."""
        return self.kind

    def _language(self, language: str | None) -> str | None:
        return language or self.language

    def _options(self, decoding: DecodingOptions | None) -> DecodingOptions:
        return decoding or self.decoding


class TransformersEngine(Engine):
    """A transformers Whisper (base, merged, or base + unmerged adapter)."""

    kind = "transformers"

    def __init__(
        self,
        model,
        processor,
        language: str | None,
        task: str = "transcribe",
        name: str = "whisper",
        decoding: DecodingOptions | None = None,
        amp: torch.dtype | None = None,
        strategy: str = "auto",
        clips: str = "auto",
        max_new_tokens: int = MAX_NEW_TOKENS,
        loaded=None,
        encoder_window: str = "full",
        vad: VadOptions | None = None,
    ):
        super().__init__(name, language, task, decoding, vad)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        if clips not in CLIP_DECODERS:
            raise ValueError(f"clip decoder must be one of {CLIP_DECODERS}, not {clips!r}")
        self.model, self.processor, self.amp = model, processor, amp
        self.strategy, self.clips, self.max_new_tokens = strategy, clips, max_new_tokens
        self.loaded = loaded  # modeling.InferenceModel, where open_engine loaded it
        self._clip_batch = 0  # see reserve
        self.device = next(model.parameters()).device
        self.peft_names: dict[str, str] = {}  # adapter name -> PEFT's, where several are loaded unmerged
        self.held = model  # the model as loaded: the rule below reads it (``model`` may be a merged copy)
        self.merged: MergedCopy | None = None  # the busiest adapter's merged copy, where one is kept
        # clips of at most 30 s (decode_clips) in the batch's longest clip ("longest") or in
        # 30 s windows; files of any length (transcribe) always take 30 s windows
        self.encoder_window = use_encoder_window(model, encoder_window)

    def _activate(self, adapter: Adapter) -> None:
        if self.merged is not None:
            self.model = self.merged.model_for(adapter.name)
        elif self.peft_names:
            self.model.set_adapter(self.peft_names[adapter.name])

    def describe(self) -> str:
        return f"transformers ({self.loaded.describe()})" if self.loaded else "transformers"

    # ---- the one rule ---------------------------------------------------------------

    def batched(self, decoding: DecodingOptions, prompt: str | None = None, samples: int = 0) -> bool:
        """Whether a file goes through the batched fast decoder (``longform.py``): a plain or
        merged model, greedy from temperature 0, no prompt, and no previous-text conditioning
        on a file longer than one window (windows decoded together cannot see each other's
        text); else ``generate``, window after window.

        A prompt (openai/whisper's initial prompt: ``<|startofprev|>`` and its tokens before
        the first window) always takes ``generate``, which passes it as ``prompt_ids``: the
        fast decoder's static caches and CUDA graphs are sized for the start tokens alone and
        have no place for a per-file prefix. Several adapters held unmerged on one base
        (``open_engine(adapters=...)``) also take ``generate``: the fast decoder needs plain
        linear layers; so does the busiest adapter's merged copy (``merged.py``), so that its
        answers are the unmerged ones. A language model (``decoding.lm``) is fused inside
        ``generate`` only."""
        if self.strategy == "sequential" or (prompt and prompt.strip()) or decoding.lm:
            return False
        if decoding.condition_on_previous_text and samples > N_SAMPLES:
            return False
        plain = supports_fast_path(self.held) and decoding.beam_size == 1 and decoding.temperature[0] == 0.0
        return self.strategy == "batched" or plain

    def fast_clips(self, language: str | None, decoding: DecodingOptions | None) -> bool:
        """Whether clips of at most 30 s go through the fast decoder (static caches, CUDA
        graphs): asked for, or a plain or merged model with the language known and greedy search;
        never with a language model to fuse (``generate`` runs it)."""
        if decoding is not None and decoding.lm:
            return False
        if self.clips in ("fast", "fast-compiled"):
            return True
        return self.clips == "auto" and language is not None and decoding is None and supports_fast_path(self.held)

    # ---- files of any length --------------------------------------------------------

    def batches(self, audio, decoding=None, prompt=None) -> bool:
        return self.batched(self._options(decoding), prompt, len(audio))

    def _decode_files(self, audios, language, task, prompt, decoding, batch_size, word_timestamps):
        decoding, language, task = self._options(decoding), self._language(language), task or self.task
        together = [i for i, a in enumerate(audios) if self.batched(decoding, prompt, len(a))]
        out: list = [None] * len(audios)
        if together:
            results = transcribe_batched(
                self.model,
                self.processor,
                [audios[i] for i in together],
                language,
                task,
                batch_size,
                decoding,
                self.max_new_tokens,
            )
            for i, result in zip(together, results):
                out[i] = result
        for i in (i for i, r in enumerate(out) if r is None):
            out[i] = transcribe_audio(
                self.model, self.processor, audios[i], language, task, self.max_new_tokens, prompt, decoding
            )
        if word_timestamps:
            heads = alignment_heads(self.model, self.folder)
            out = [
                (add_words(self.model, self.processor, a, s, used, task, heads), used)
                for a, (s, used) in zip(audios, out)
            ]
        return out

    def detect_languages(self, audios):
        features = log_mel(self.processor.feature_extractor, [a[:N_SAMPLES] for a in audios], device=self.device)
        features = features.to(device=self.device, dtype=input_dtype(self.model))
        with torch.inference_mode():
            return [detect_language(self.model, self.processor, f[None]) for f in features]

    # ---- clips of at most 30 s ------------------------------------------------------

    def decode_clips(self, audios, language, task, max_new_tokens, min_new_tokens=0, decoding=None):
        features = log_mel(self.processor.feature_extractor, audios, device=self.device, window=self.encoder_window)
        features = features.to(device=self.device, dtype=input_dtype(self.model))
        autocast = torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with torch.inference_mode(), autocast, quiet_generate():
            if self.fast_clips(language, decoding):
                ids = self._fast(features, language, task, len(audios), max_new_tokens, min_new_tokens)
            else:
                ids = self._generate(features, language, task, max_new_tokens, min_new_tokens, decoding)
        return [t.strip() for t in self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def _fast(self, features, language, task, batch, max_new_tokens, min_new_tokens):
        prompt = prompt_ids(self.model, self.processor.tokenizer, language, task)
        compiled = self.clips == "fast-compiled"
        dtype = self.amp or input_dtype(self.model)
        # one decoder shape per engine and batch size (cached on the model; the last batch
        # of a dataset is padded into it)
        width = max(batch, self._clip_batch)
        positions = features.shape[-1] // 2  # the encoder's convolutions halve the frames
        decoder = decoder_for(
            self.model, width, len(prompt) + max_new_tokens, dtype, compile_encoder=compiled, positions=positions
        )
        return decoder(features, prompt, max_new_tokens, min_new_tokens)

    def _generate(self, features, language, task, max_new_tokens, min_new_tokens, decoding):
        kwargs = {"max_new_tokens": max_new_tokens} | ({"min_new_tokens": min_new_tokens} if min_new_tokens else {})
        session = contextlib.nullcontext()
        if decoding is not None:
            # a padded tensor back: transformers 5 fails to stack a batch's outputs once its
            # clips ended at different fallback temperatures (different lengths)
            kwargs |= {**decoding.generate_kwargs(), "return_dict_in_generate": False}
            kwargs |= fusion_kwargs(decoding, self.model, self.processor.tokenizer)
            session = decoding_session(self.model, self.processor.tokenizer, self.device)
        if features.shape[-1] < N_FRAMES:
            # generate pads short features back to 30 s; given the encoder's output it cannot
            kwargs["encoder_outputs"] = self.model.get_encoder()(features)
        else:
            kwargs["input_features"] = features
        with session:
            out = self.model.generate(language=language, task=task, **kwargs)
        return out if torch.is_tensor(out) else out["sequences"]

    def reserve(self, batch: int) -> None:
        """Decode clips in batches of up to ``batch``: one fast decoder of that width serves
        every batch (the shorter last one too), as evaluation always did."""
        self._clip_batch = batch

    @contextlib.contextmanager
    def evaluating(self):
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def base_only(self):
        """The base model inside the block: the adapters switched off (unmerged adapters only)."""
        switch = getattr(self.held, "disable_adapter", None)
        saved, self.model = self.model, self.held
        try:
            with switch() if switch else contextlib.nullcontext():
                yield
        finally:
            self.model = saved


class CT2Engine(Engine):
    """A CTranslate2 export on faster-whisper."""

    kind = "ctranslate2"

    def __init__(
        self,
        path,
        language=None,
        task="transcribe",
        decoding=None,
        suppress=True,
        compute_type="default",
        hotwords: str | None = None,
        vad: VadOptions | None = None,
    ):
        super().__init__(str(path), language, task, decoding, vad)
        refuse_lm(decoding, "faster-whisper")  # before the model loads
        self.model = load_ct2(path, compute_type)
        self.suppress = suppress  # non-speech tokens suppressed in decode_clips, as a source's generation config does
        self.hotwords = hotwords  # faster-whisper's: put before every window's previous text

    def _decode_files(self, audios, language, task, prompt, decoding, batch_size, word_timestamps):
        language, task, decoding = self._language(language), task or self.task, self._options(decoding)
        refuse_lm(decoding, "faster-whisper")
        return [
            transcribe_audio_ct2(self.model, a, language, task, prompt, decoding, self.hotwords, word_timestamps)
            for a in audios
        ]

    def decode_clips(self, audios, language, task, max_new_tokens, min_new_tokens=0, decoding=None):
        return [greedy_text_ct2(self.model, a, language, task, max_new_tokens, self.suppress).strip() for a in audios]

    def describe(self) -> str:
        return f"faster-whisper ({self.model.model.compute_type} on {self.model.model.device})"


class GGMLEngine(Engine):
    """A whisper.cpp file (``export-ggml``), for checking it against its source: clips only."""

    kind = "whisper.cpp"

    def __init__(self, path, language=None, task="transcribe", window: int = MAX_NEW_TOKENS, suppress: bool = True):
        super().__init__(str(path), language, task)
        self.path, self.window, self.suppress = Path(path), window, suppress

    def _decode_files(self, audios, language, task, prompt, decoding, batch_size, word_timestamps):
        raise UserError("whisper.cpp files are checked here, not served: run them with whisper.cpp itself")

    def decode_clips(self, audios, language, task, max_new_tokens, min_new_tokens=0, decoding=None):
        from .ggml import greedy_texts_ggml

        texts = greedy_texts_ggml(self.path, audios, language, task, max_new_tokens, self.window, self.suppress)
        return [t.strip() for t in texts]

    def describe(self) -> str:
        return f"whisper.cpp ({self.path.name})"


def open_engine(
    model: str | Path | None = None,
    adapter: str | Path | None = None,
    *,
    device: torch.device | None = None,
    exact: bool = False,
    merge: bool = True,
    language: str | None = None,
    task: str | None = None,
    decoding: DecodingOptions | None = None,
    kind: str | None = None,
    strategy: str = "auto",
    clips: str = "auto",
    suppress: bool = True,
    window: int | None = None,
    adapters: dict[str, str | Path] | None = None,
    hotwords: str | None = None,
    merge_busiest: bool = False,
    encoder_window: str = "full",
    vad: VadOptions | None = None,
) -> Engine:
    """The engine for ``model`` (+ ``adapter``), the back-end chosen here once: an
    ``export-ct2`` folder runs on faster-whisper, a ggml file (``kind="ggml"``) on
    whisper.cpp, anything else loads through ``modeling.load_for_inference`` (``exact``:
    the base held as trained, adapter unmerged; ``merge=False``: the adapter unmerged so that
    :meth:`TransformersEngine.base_only` gives the base). ``language`` "auto" or None on an
    export: detected; ``decoding``: the engine's default options. ``suppress`` and
    ``window`` are the export check's rules for clips (``parity``).

    ``adapters`` (name -> folder, instead of ``adapter``): one adapter is merged as
    ``adapter`` is; several are held unmerged on one copy of their base (PEFT's
    ``load_adapter``), and :meth:`Engine.using` switches between them by name. Adapters
    trained on different bases are refused; ``merge_busiest``: the busiest of them decoded from
    a merged copy (``merged.py``). ``hotwords``: faster-whisper's (a CTranslate2 model only).
    ``encoder_window`` "longest": clips decoded in their batch's longest clip instead of 30 s
    windows (``encoder_window.py``; a transformers model only). ``vad``: the engine's speech
    filter (None: off unless a call asks)."""
    _check_engine_options(model, adapter, kind, adapters, hotwords, encoder_window)
    if adapters and len(adapters) > 1:
        return _open_adapters(model, adapters, device, language, task, decoding, merge_busiest, vad)
    named = next(iter(adapters)) if adapters else None  # one adapter by name: merged, as adapter is
    adapter = adapters[named] if named else adapter
    if kind is not None:
        check_runtime(kind, Path(model))
    if kind == "ggml":
        return GGMLEngine(model, language, task or "transcribe", window or MAX_NEW_TOKENS, suppress)
    if model and is_ct2_model(model):
        if adapter or exact:
            raise UserError("a CTranslate2 model has its adapter merged already: drop --adapter/--exact")
        from ..processor import resolve_language

        forced = None if language in (None, "auto") else resolve_language(language)
        return CT2Engine(model, forced, task or "transcribe", decoding, suppress, hotwords=hotwords, vad=vad)
    from ..modeling import load_for_inference, pick_device

    model, adapter = (None if x is None else str(x) for x in (model, adapter))
    loaded = load_for_inference(
        model, adapter, device or pick_device(), exact=exact, language=language, task=task, merge=merge
    )
    engine = TransformersEngine(
        loaded.model,
        loaded.processor,
        loaded.language,
        loaded.task,
        name=str(adapter or loaded.base),
        decoding=decoding,
        amp=loaded.autocast_dtype,
        strategy=strategy,
        clips=clips,
        loaded=loaded,
        encoder_window=encoder_window,
        vad=vad,
    )
    engine.folder = None if adapter is None else str(adapter)
    if named:
        engine.adapters = {named: Adapter(named, str(adapter), engine.language, engine.task)}
    return engine


def _check_engine_options(model, adapter, kind, adapters, hotwords, encoder_window) -> None:
    """Options that only one kind of engine takes, refused in one line elsewhere."""
    export = bool(model) and kind is None and is_ct2_model(model)
    if hotwords and not export:
        raise UserError(
            "--hotwords is faster-whisper's: it needs a CTranslate2 model (export-ct2), "
            f"not {model or adapter or 'this model'}"
        )
    if adapters and adapter:
        raise ValueError("give adapter or adapters, not both")
    if encoder_window != "full" and (kind is not None or export or adapters):
        raise UserError(
            f"--encoder-window {encoder_window} is for a transformers model and one adapter: "
            "drop it for an export or several adapters"
        )


def _open_adapters(
    model, adapters: dict, device, language, task, decoding, merge_busiest=False, vad=None
) -> TransformersEngine:
    """Several adapters on one base, unmerged: the first loaded as ``load_for_inference``
    loads it, the others beside it with PEFT's ``load_adapter``."""
    from ..modeling import load_for_inference, pick_device
    from ..processor import resolve_language
    from ..run import AdapterMeta

    metas = {name: AdapterMeta.read(path) for name, path in adapters.items()}
    bases = {name: meta.resolve_base(adapters[name]) for name, meta in metas.items() if meta.base}
    if len(set(bases.values())) > 1:
        a, b = list(bases)[0], next(n for n, x in bases.items() if x != bases[list(bases)[0]])
        raise UserError(
            f"adapters of different bases cannot share one model: {a} is on {bases[a]}, {b} on {bases[b]}; "
            "serve each base on its own"
        )
    first, *others = adapters
    loaded = load_for_inference(
        None if model is None else str(model),
        str(adapters[first]),
        device or pick_device(),
        language=language,
        task=task,
        merge=False,
    )
    peft_names = {first: "default"}  # PEFT's name for the first; its names must be module keys (no dots)
    for i, name in enumerate(others, start=1):
        peft_names[name] = f"adapter{i}"
        loaded.model.load_adapter(str(adapters[name]), adapter_name=peft_names[name])
    loaded.model.eval()
    engine = TransformersEngine(
        loaded.model,
        loaded.processor,
        loaded.language,
        loaded.task,
        name=str(adapters[first]),
        decoding=decoding,
        amp=loaded.autocast_dtype,
        loaded=loaded,
        vad=vad,
    )
    engine.peft_names, engine.folder = peft_names, str(adapters[first])
    engine.merged = MergedCopy(loaded.model, peft_names) if merge_busiest else None
    for name, meta in metas.items():
        own = None if language == "auto" else language or meta.language
        engine.adapters[name] = Adapter(
            name, str(adapters[name]), resolve_language(own) if own else None, task or meta.task or "transcribe"
        )
    return engine


def refuse_lm(decoding: DecodingOptions | None, runtime: str) -> None:
    """One line for a language model asked of a back-end without shallow fusion."""
    if decoding is not None and decoding.lm:
        raise UserError(
            f"--lm (shallow fusion) runs in the transformers engine, not on {runtime}: "
            "give the transformers model (or the adapter) instead of the export"
        )


RUNTIMES = {  # export kind -> (what it is, module of its runtime, the runtime, how to install it)
    "ct2": ("CTranslate2", "faster_whisper", "faster-whisper", "pip install 'whisper-tune[export]'"),
    "ggml": ("ggml", "pywhispercpp.model", "whisper.cpp", "pip install pywhispercpp"),
}


def check_runtime(kind: str, path: Path) -> None:
    """Refuse, in one line, an export whose runtime is not installed or whose path is not
    what ``kind`` says (``ct2``: a CTranslate2 folder; ``ggml``: a whisper.cpp file)."""
    import importlib

    what, module, runtime, install = RUNTIMES[kind]
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(f"checking a {what} export needs {runtime}: {install}") from None
    if kind == "ct2" and not is_ct2_model(path):
        raise UserError(f"{path} is not a CTranslate2 model folder (no model.bin)")
    if kind == "ggml" and not path.is_file():
        raise UserError(f"{path} is not a ggml model file")
