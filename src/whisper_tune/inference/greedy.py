"""Fast greedy decoding for Whisper: static key/value caches and, on CUDA, one CUDA graph
per decoding step.

Greedy decoding of a batch of 30 s windows is one encoder pass and then one small decoder
step per token. With transformers' ``generate`` each step launches hundreds of small kernels
from Python (caches, logits processors, 32 layers of modules), so on a large GPU the
decoder mostly waits on the CPU: 64 tokens of large-v2 took 1.75 s for a batch of 8 (4.6
clips/s; benchmarks/results/history/0-before-eval_speed-large-v2-gpu.md), where this
decoder takes 0.34 s (23.9 clips/s). Here each step is replayed as one CUDA graph over buffers allocated once: the
self-attention cache has a fixed length and a position mask, the cross-attention keys and
values are computed once per batch. No ``torch.compile``: its static-cache path crashed the
process on our GPU image, and a graph capture that fails falls back to the same steps run
eagerly, which also serves the CPU.

It reproduces ``generate``'s greedy search for short-form transcription: the
``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` prompt, ``suppress_tokens`` at
every step, ``begin_suppress_tokens`` at the first, ``min_new_tokens`` by suppressing
end-of-text, and end-of-text as padding once a clip is finished. Tests check that the
tokens equal ``generate``'s.

With ``timestamps`` (the long-form engine, ``longform.py``) the prompt has no
``<|notimestamps|>`` and each step applies the rules of transformers'
``WhisperTimeStampLogitsProcessor`` (openai's ``ApplyTimestampRules``) as tensor operations
on per-clip state, so they stay inside the graph: time stamps in pairs, never decreasing,
the first token a time stamp no later than ``max_initial_timestamp_index``, and a time
stamp whenever their summed probability beats every text token. The step then also sums
each clip's token log-probabilities and keeps the no-speech probability of the first
position: the window scores robust decoding compares with its thresholds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

log = logging.getLogger(__name__)

CHECK_DONE_EVERY = 8  # steps between the (synchronising) check that every clip has ended


@dataclass(frozen=True)
class DecodeSpec:
    """What shapes a captured graph: the batch and the longest sequence."""

    batch: int
    max_len: int
    timestamps: bool = False  # time-stamp rules and window scores (long-form decoding)
    positions: int | None = None  # encoder positions of the window (None: the model's 1500, 30 s)


@dataclass(frozen=True)
class Decoded:
    """One window's result: tokens (end-of-text excluded) and the scores of robust decoding."""

    tokens: list[int]
    avg_logprob: float  # openai's: summed log-probabilities (end-of-text included) / (tokens + 1)
    no_speech_prob: float  # probability of <|nospeech|> after <|startoftranscript|>


def supports_fast_path(model) -> bool:
    """A plain (merged or base) Whisper model with the attention layout this decoder knows;
    adapters left unmerged or bitsandbytes layers go through ``generate``."""
    try:
        layer = model.model.decoder.layers[0]
        modules = (layer.self_attn.q_proj, layer.encoder_attn.k_proj, layer.fc1, model.proj_out)
    except AttributeError:
        return False
    return all(type(m) is torch.nn.Linear for m in modules)


def prompt_ids(model, tokenizer, language: str | None, task: str, timestamps: bool = False) -> list[int]:
    """The forced prefix, as ``generate`` builds it (language omitted when None: the model
    then picks it, which this decoder does not do: callers pass a language)."""
    tokens = ["<|startoftranscript|>"]
    if language:
        tokens.append(f"<|{language}|>")
    tokens += [f"<|{task}|>"] + ([] if timestamps else ["<|notimestamps|>"])
    return tokenizer.convert_tokens_to_ids(tokens)


class GreedyDecoder:
    """Greedy decoding for one model and one batch shape; build once, call per batch."""

    def __init__(
        self,
        model,
        spec: DecodeSpec,
        dtype: torch.dtype,
        use_graph: bool | None = None,
        max_initial_timestamp_index: int | None = None,
        compile_encoder: bool = False,
    ):
        self.model, self.spec = model, spec
        # the encoder, compiled on request: fused element-wise work and attention made large-v2's
        # encoder pass 1.37x faster at batch 128 on an H200 (benchmarks/results/decoder-profile-h200/),
        # for a compilation of about a minute: worth it on long jobs only
        self.encoder = torch.compile(model.model.encoder, dynamic=False) if compile_encoder else model.model.encoder
        cfg = model.config
        self.device = next(model.parameters()).device
        self.heads = cfg.decoder_attention_heads
        self.head_dim = cfg.d_model // self.heads
        layers, b = len(model.model.decoder.layers), spec.batch
        gc = model.generation_config
        self.eos = gc.eos_token_id if isinstance(gc.eos_token_id, int) else gc.eos_token_id[0]
        vocab = cfg.vocab_size
        shape = (layers, b, self.heads, spec.max_len, self.head_dim)
        cross = (layers, b, self.heads, spec.positions or cfg.max_source_positions, self.head_dim)
        kw = {"device": self.device, "dtype": dtype}
        self.k_self, self.v_self = torch.zeros(shape, **kw), torch.zeros(shape, **kw)
        self.k_cross, self.v_cross = torch.zeros(cross, **kw), torch.zeros(cross, **kw)
        self.tokens = torch.zeros(b, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self.bias = torch.zeros(vocab, device=self.device)  # this step's additive logits mask
        self.done = torch.zeros(b, dtype=torch.bool, device=self.device)
        self.next = torch.zeros(b, dtype=torch.long, device=self.device)
        self.positions = torch.arange(spec.max_len, device=self.device)
        suppress = torch.zeros(vocab, device=self.device)
        suppress[[t for t in (gc.suppress_tokens or []) if t < vocab]] = float("-inf")
        first = suppress.clone()
        first[[t for t in (getattr(gc, "begin_suppress_tokens", None) or []) if t < vocab]] = float("-inf")
        no_eos = torch.zeros(vocab, device=self.device)
        no_eos[self.eos] = float("-inf")
        self.masks = {"prompt": torch.zeros(vocab, device=self.device), "first": first, "later": suppress}
        self.no_eos = no_eos
        if spec.timestamps:
            self._timestamp_state(gc, vocab, max_initial_timestamp_index)
        self.graph = None
        if use_graph is None:
            use_graph = self.device.type == "cuda"
        if use_graph:
            self.graph = self._capture()

    def _timestamp_state(self, gc, vocab: int, max_initial: int | None) -> None:
        """Masks and per-clip buffers of the time-stamp rules (see the module docstring)."""
        self.ts_begin = gc.no_timestamps_token_id + 1
        self.no_speech_id = gc.no_timestamps_token_id - 1  # <|nospeech|> (<|nocaptions|>), as transformers
        self.vocab = vocab
        self.time_ids = torch.arange(self.ts_begin, vocab, device=self.device)
        for name in ("first", "later"):
            self.masks[name][gc.no_timestamps_token_id] = float("-inf")
        self.masks["first"][: self.ts_begin] = float("-inf")  # the first token is a time stamp...
        if max_initial is not None:  # ...no later than this
            self.masks["first"][self.ts_begin + max_initial + 1 :] = float("-inf")
        b = self.spec.batch
        self.last_time = torch.zeros(b, dtype=torch.bool, device=self.device)
        self.before_last_time = torch.ones(b, dtype=torch.bool, device=self.device)
        self.fresh = torch.ones(1, dtype=torch.bool, device=self.device)  # no token generated yet
        self.time_last = torch.full((b,), self.ts_begin - 1, dtype=torch.long, device=self.device)
        self.sum_logprob = torch.zeros(b, device=self.device)
        self.logits = torch.zeros(b, vocab, device=self.device)

    def _reset_timestamp_state(self) -> None:
        self.last_time.zero_()
        self.before_last_time.fill_(True)
        self.fresh.fill_(True)
        self.time_last.fill_(self.ts_begin - 1)
        self.sum_logprob.zero_()

    def _timestamp_rules(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' ``WhisperTimeStampLogitsProcessor`` on every clip at once, in place
        (as row-wise bounds, not vocabulary-wide masks: on a CPU those cost as much as the
        decoder step of a small model); also returns the logits' log-normaliser."""
        pair_open = self.last_time & ~self.before_last_time  # a time stamp after text: close or end
        logits[:, : self.eos].masked_fill_(pair_open[:, None], float("-inf"))  # closing: no text
        floor = torch.where(pair_open, self.time_last, self.time_last + 1)  # never backwards...
        floor = torch.where(self.last_time & self.before_last_time, self.vocab, floor)  # ...none after two
        times = logits[:, self.ts_begin :]
        times.masked_fill_(self.time_ids[None] < floor[:, None], float("-inf"))
        total, time_total = logits.logsumexp(-1), times.logsumexp(-1)
        time_wins = time_total > logits[:, : self.ts_begin].max(-1).values  # summed time-stamp probability wins
        logits[:, : self.ts_begin].masked_fill_(time_wins[:, None], float("-inf"))
        return logits, torch.where(time_wins, time_total, total)

    def _capture(self):
        """One decoding step as a CUDA graph (None, with a warning, where capture fails)."""
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: cuBLAS handles and workspaces exist before capture
                    self._step()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step()
            return graph
        except Exception as e:  # noqa: BLE001 - any capture failure: run the same steps eagerly
            log.warning("CUDA graph capture failed (%s): decoding step by step instead", str(e).splitlines()[0])
            torch.cuda.synchronize(self.device)
            return None

    def _attend(self, attn, x, keys, values, mask=None):
        b = x.shape[0]
        q = (attn.q_proj(x) * attn.scaling).view(b, 1, self.heads, self.head_dim).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0)
        return attn.out_proj(out.transpose(1, 2).reshape(b, 1, -1))

    def _step(self) -> None:
        """Feed ``tokens`` at position ``pos``; write the greedy choice into ``next``."""
        decoder, b = self.model.model.decoder, self.spec.batch
        h = decoder.embed_tokens(self.tokens[:, None]) + decoder.embed_positions.weight[self.pos][None]
        mask = (self.positions <= self.pos)[None, None, None, :]
        for i, layer in enumerate(decoder.layers):
            attn = layer.self_attn
            x = layer.self_attn_layer_norm(h)
            k = attn.k_proj(x).view(b, 1, self.heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, 1, self.heads, self.head_dim).transpose(1, 2)
            self.k_self[i].index_copy_(2, self.pos, k.to(self.k_self.dtype))
            self.v_self[i].index_copy_(2, self.pos, v.to(self.v_self.dtype))
            h = h + self._attend(attn, x, self.k_self[i], self.v_self[i], mask)
            x = layer.encoder_attn_layer_norm(h)
            h = h + self._attend(layer.encoder_attn, x, self.k_cross[i], self.v_cross[i])
            x = layer.final_layer_norm(h)
            h = h + layer.fc2(layer.activation_fn(layer.fc1(x)))
        logits = self.model.proj_out(decoder.layer_norm(h))[:, 0].float() + self.bias
        if not self.spec.timestamps:
            choice = torch.where(self.done, self.eos, logits.argmax(-1))
            self.done |= choice == self.eos
            self.next.copy_(choice)
            return
        self.logits.copy_(logits)  # the prompt's first position: no-speech probability
        logits, normaliser = self._timestamp_rules(logits)
        choice = torch.where(self.done, self.eos, logits.argmax(-1))
        picked = logits.gather(1, choice[:, None])[:, 0] - normaliser
        self.sum_logprob += torch.where(self.done, 0.0, picked)
        is_time = choice >= self.ts_begin
        self.before_last_time.copy_(self.last_time | self.fresh)  # transformers: "len(seq) < 2" counts as one
        self.last_time.copy_(is_time)
        self.fresh.fill_(False)
        self.time_last.copy_(torch.where(is_time, choice, self.time_last))
        self.done |= choice == self.eos
        self.next.copy_(choice)

    def _run_step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()

    def _encode(self, features: torch.Tensor) -> None:
        """Encoder pass and the cross-attention keys/values of every layer."""
        model, b = self.model, self.spec.batch
        states = self.encoder(features).last_hidden_state
        for i, layer in enumerate(model.model.decoder.layers):
            attn = layer.encoder_attn
            for proj, cache in ((attn.k_proj, self.k_cross), (attn.v_proj, self.v_cross)):
                cache[i].copy_(proj(states).view(b, -1, self.heads, self.head_dim).transpose(1, 2))

    def __call__(
        self, features: torch.Tensor, prompt: list[int], max_new_tokens: int, min_new_tokens: int = 0
    ) -> list[list[int]]:
        """Token ids generated for each clip of ``features`` (at most ``spec.batch``), end-of-text
        excluded."""
        return [d.tokens for d in self.decode(features, prompt, max_new_tokens, min_new_tokens)]

    def decode(
        self, features: torch.Tensor, prompt: list[int], max_new_tokens: int, min_new_tokens: int = 0
    ) -> list[Decoded]:
        """As ``__call__``, with each clip's scores (NaN where ``spec.timestamps`` is off)."""
        n, b = features.shape[0], self.spec.batch
        if n > b or len(prompt) + max_new_tokens > self.spec.max_len:
            raise ValueError(f"batch {n} / length {len(prompt) + max_new_tokens} exceed the decoder's {self.spec}")
        if n < b:  # the last, smaller batch: pad with silence-free zeros, dropped below
            features = torch.cat([features, features.new_zeros((b - n, *features.shape[1:]))])
        self._encode(features)
        self.done.zero_()
        no_speech = torch.full((b,), float("nan"))
        for j, token in enumerate(prompt[:-1]):  # the prompt fills the self-attention cache
            self.tokens.fill_(token)
            self.pos.fill_(j)
            self.bias.copy_(self.masks["prompt"])
            self._run_step()
            if j == 0 and self.spec.timestamps:
                no_speech = self.logits.softmax(-1)[:, self.no_speech_id]
        if self.spec.timestamps:
            self._reset_timestamp_state()
        self.tokens.fill_(prompt[-1])
        out = torch.full((b, max_new_tokens), self.eos, dtype=torch.long, device=self.device)
        self.done[n:] = True
        for t in range(max_new_tokens):
            self.pos.fill_(len(prompt) - 1 + t)
            self.bias.copy_(self.masks["first" if t == 0 else "later"])
            if t < min_new_tokens:
                self.bias.add_(self.no_eos)
            self._run_step()
            out[:, t] = self.next
            self.tokens.copy_(self.next)
            # no clip can have ended before min_new_tokens: no synchronising check until then
            if (t + 1) % CHECK_DONE_EVERY == 0 and t + 1 >= min_new_tokens and bool(self.done.all()):
                break
        rows = [row[: row.index(self.eos)] if self.eos in row else row for row in out[:n].tolist()]
        if not self.spec.timestamps:
            return [Decoded(row, float("nan"), float("nan")) for row in rows]
        sums, no_speech = self.sum_logprob[:n].tolist(), no_speech[:n].tolist()
        return [Decoded(row, s / (len(row) + 1), p) for row, s, p in zip(rows, sums, no_speech)]


def decoder_for(
    model,
    batch: int,
    max_len: int,
    dtype: torch.dtype,
    timestamps: bool = False,
    max_initial: int | None = None,
    compile_encoder: bool = False,
    positions: int | None = None,
) -> GreedyDecoder:
    """A cached decoder for this model and shape (graphs and caches are built once).

    One shape at a time (the caches of large-v2 at batch 64 take 20 GB), except short
    encoder windows (``positions``, ``encoder_window.py``): decoders that differ only in
    their window are kept while their windows add up to at most one 30 s window, so a
    corpus's few window lengths are built once each, in no more memory than one 30 s decoder."""
    cache = model.__dict__.setdefault("_whisper_tune_decoders", {})
    full = model.config.max_source_positions
    positions = None if positions in (None, full) else positions
    key = (DecodeSpec(batch, max_len, timestamps, positions), dtype, max_initial, compile_encoder)
    if key not in cache:
        _make_room(cache, key, full)
        cache[key] = GreedyDecoder(
            model, key[0], dtype, max_initial_timestamp_index=max_initial, compile_encoder=compile_encoder
        )
    return cache[key]


def _make_room(cache: dict, key: tuple, full: int) -> None:
    """Drop cached decoders until ``key``'s fits: another shape (batch, length, dtype, ...)
    clears the cache; windows of one shape stay while they add up to ``full`` positions."""
    spec = key[0]
    same = {k for k in cache if (replace(k[0], positions=None), *k[1:]) == (replace(spec, positions=None), *key[1:])}
    for k in [k for k in cache if k not in same]:
        del cache[k]
    while cache and sum(k[0].positions or full for k in cache) + (spec.positions or full) > full:
        del cache[next(iter(cache))]  # the oldest first
