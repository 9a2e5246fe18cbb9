"""A small n-gram language model of a training text, for shallow fusion at decode time
(``inference.fusion``): ``build-lm`` writes it as JSON, ``--lm FILE`` reads it.

Why it is built this way:

* **The unit is Whisper's own BPE token**, so the model scores exactly the choices the
  decoder makes, with no re-tokenizing at each step. For scripts that byte-level BPE splits
  finely (Devanagari: about 0.9 characters a token) a token 6-gram spans 4-6 characters, so
  it behaves as a character model and still scores words it never saw; for English (about
  4 characters a token) it is closer to a word model. Every multilingual Whisper (tiny to
  large-v3-turbo) shares the text tokens below ``<|endoftext|>``, so one file serves them
  all; an English-only tokenizer is refused (:meth:`NgramLM.check_tokenizer`).
* **Interpolated Kneser-Ney** (Chen and Goodman's, one discount per order from the
  counts of counts), because a few thousand sentences leave most long contexts unseen:
  the highest order uses raw counts, the lower ones continuation counts (in how many
  contexts a token follows), and the order-0 model is mixed with a uniform one over the
  text tokens and the end, so every token has a probability and each context's
  distribution sums to 1 (tests/test_text_lm.py holds it).
* **The end of the sentence is a token** (index ``eos``, Whisper's ``<|endoftext|>``): a
  fused decoder learns from the text where sentences end, not only what they say.
* Pure Python and numpy, no kenlm: a model of a few thousand sentences builds in seconds,
  and the JSON file can be read and checked by hand.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import UserError

FORMAT = "whisper-tune-ngram"
VERSION = 1
DEFAULT_ORDER = 8  # tokens, about 6-8 Devanagari characters: held-out perplexity stops falling (docs/evaluation.md)
MAX_ORDER = 12
BOS = -1  # the start-of-sentence padding in contexts (never a vocabulary id)
PROBE = "whisper-tune नमस्कार"  # its token ids are stored: another tokenizer gives other ids
DISCOUNT_RANGE = (0.1, 0.95)  # Kneser-Ney discounts estimated from few counts are kept in this range
CACHE_CONTEXTS = 4096  # distributions kept per model (beams and batch rows share contexts)


def _key(context: Sequence[int]) -> str:
    return " ".join(map(str, context))


@dataclass
class NgramLM:
    """An interpolated Kneser-Ney n-gram model over token ids ``0 .. eos`` (``eos``: the end
    of a sentence). ``tables[k]`` maps a context of ``k`` tokens (space-joined ids, ``-1``
    for the start) to the counts of the tokens after it (raw counts at the highest order,
    continuation counts below)."""

    order: int
    eos: int
    discounts: list[float]
    tables: list[dict[str, dict[int, int]]]
    probe: list[int] = field(default_factory=list)
    sentences: int = 0
    source: str = ""

    @property
    def size(self) -> int:
        """Entries of a distribution: the text tokens and the end."""
        return self.eos + 1

    # ---- building --------------------------------------------------------------------

    @classmethod
    def build(
        cls, sequences: Iterable[Sequence[int]], order: int, eos: int, probe: list[int] | None = None, source: str = ""
    ) -> NgramLM:
        """The model of ``sequences`` (token ids below ``eos``, one sentence each)."""
        if not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
            raise UserError(f"the n-gram order must be a whole number from 1 to {MAX_ORDER}, not {order!r}")
        top: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        n_sentences = 0
        for seq in sequences:
            ids = [int(t) for t in seq]
            if any(not 0 <= t < eos for t in ids):
                raise ValueError(f"token ids must be text tokens below {eos}")
            n_sentences += 1
            padded = [BOS] * (order - 1) + ids + [eos]
            for i in range(order - 1, len(padded)):
                top[tuple(padded[i - order + 1 : i])][padded[i]] += 1
        if not n_sentences:
            raise UserError("no sentences to build a language model from: the split is empty")
        levels = [top]
        for _ in range(order - 1):  # continuation counts: distinct left neighbours of (h[1:], w)
            higher, lower = levels[0], defaultdict(lambda: defaultdict(int))
            for context, nexts in higher.items():
                for w in nexts:
                    lower[context[1:]][w] += 1
            levels.insert(0, lower)
        tables = [{_key(h): dict(nexts) for h, nexts in level.items()} for level in levels]
        return cls(order, eos, [_discount(t) for t in tables], tables, probe or [], n_sentences, source)

    # ---- scoring ---------------------------------------------------------------------

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """P(next | context) over ``0 .. eos`` (float64, sums to 1); ``context``: the
        sentence's tokens so far (only the last ``order - 1`` count)."""
        keep = self.order - 1
        ctx = tuple(int(t) for t in context)[-keep:] if keep else ()
        ctx = (BOS,) * (keep - len(ctx)) + ctx
        return self._cached(ctx)

    def logprobs(self, context: Sequence[int]) -> np.ndarray:
        """``log`` of :meth:`distribution`, float32 (never -inf: every token has a share)."""
        return np.log(self.distribution(context)).astype(np.float32)

    def _cached(self, ctx: tuple) -> np.ndarray:
        if not hasattr(self, "_memo"):
            self._memo = lru_cache(maxsize=CACHE_CONTEXTS)(self._compute)
        return self._memo(ctx)

    def _compute(self, ctx: tuple) -> np.ndarray:
        probs = np.full(self.size, 1.0 / self.size)
        for k in range(self.order):
            nexts = self.tables[k].get(_key(ctx[len(ctx) - k :] if k else ()))
            if not nexts:
                continue  # an unseen context: the lower order's distribution as it is
            total, d = sum(nexts.values()), self.discounts[k]
            probs *= d * len(nexts) / total
            ids = np.fromiter(nexts.keys(), dtype=np.int64, count=len(nexts))
            counts = np.fromiter(nexts.values(), dtype=np.float64, count=len(nexts))
            probs[ids] += (counts - d) / total
        probs.setflags(write=False)
        return probs

    def perplexity(self, sequences: Iterable[Sequence[int]]) -> float:
        """Per-token perplexity (the end included) of held-out sentences."""
        total, n = 0.0, 0
        for seq in sequences:
            ids = [int(t) for t in seq] + [self.eos]
            for i, w in enumerate(ids):
                total -= math.log(self.distribution(ids[:i])[w])
                n += 1
        return math.exp(total / n) if n else float("nan")

    # ---- the file --------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        body = {
            "format": FORMAT,
            "version": VERSION,
            "unit": "whisper-bpe",
            "order": self.order,
            "eos": self.eos,
            "probe": {"text": PROBE, "ids": self.probe},
            "sentences": self.sentences,
            "source": self.source,
            "discounts": self.discounts,
            "tables": [{h: {str(w): c for w, c in nexts.items()} for h, nexts in t.items()} for t in self.tables],
        }
        path.write_text(json.dumps(body, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        """The model in ``path``; a UserError in one line for anything else."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"language model {path} not found: build one with whisper-tune build-lm")
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path} is not a whisper-tune language model (not JSON: {e}); use build-lm") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise UserError(f"{path} is not a whisper-tune language model (no format {FORMAT!r}); use build-lm")
        if body.get("version") != VERSION:
            raise UserError(f"{path} is version {body.get('version')} of the format, this whisper-tune reads {VERSION}")
        try:
            order, eos = int(body["order"]), int(body["eos"])
            tables = [{h: {int(w): int(c) for w, c in nexts.items()} for h, nexts in t.items()} for t in body["tables"]]
            lm = cls(order, eos, [float(d) for d in body["discounts"]], tables, list(body["probe"]["ids"]))
            lm.sentences, lm.source = int(body.get("sentences", 0)), str(body.get("source", ""))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{path} is a damaged language model ({type(e).__name__}: {e}); build it again") from None
        lm._validate(path)
        return lm

    def _validate(self, path) -> None:
        ok = 1 <= self.order <= MAX_ORDER and len(self.tables) == self.order == len(self.discounts)
        ok = ok and all(0 < d < 1 for d in self.discounts) and self.eos > 0
        ok = ok and all(0 <= w <= self.eos and c > 0 for t in self.tables for n in t.values() for w, c in n.items())
        if not ok:
            raise UserError(f"{path} is a damaged language model (order, discounts or token ids out of range)")

    def check_tokenizer(self, tokenizer, where: str = "this model") -> None:
        """Refuse a model built with another vocabulary than ``tokenizer``'s."""
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        ids = tokenizer.encode(PROBE, add_special_tokens=False)
        if eos != self.eos or (self.probe and list(ids) != list(self.probe)):
            raise UserError(
                f"the language model was built with another tokenizer than {where}'s (an English-only Whisper?): "
                "build it again with --model set to this model"
            )


def _discount(table: dict[str, dict[int, int]]) -> float:
    """Kneser-Ney's D = n1 / (n1 + 2 n2) from the counts of counts, kept in DISCOUNT_RANGE."""
    n1 = sum(1 for nexts in table.values() for c in nexts.values() if c == 1)
    n2 = sum(1 for nexts in table.values() for c in nexts.values() if c == 2)
    d = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    return min(max(d, DISCOUNT_RANGE[0]), DISCOUNT_RANGE[1])


def token_sentences(tokenizer, texts: Iterable[str]) -> list[list[int]]:
    """The text tokens of each sentence, as the training labels have them (no prefix)."""
    return [tokenizer.encode(t.strip(), add_special_tokens=False) for t in texts if t and t.strip()]


def build_lm(tokenizer, texts: Iterable[str], order: int = DEFAULT_ORDER, source: str = "") -> NgramLM:
    """The n-gram model of ``texts`` (one sentence each) in ``tokenizer``'s tokens."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    probe = tokenizer.encode(PROBE, add_special_tokens=False)
    return NgramLM.build(token_sentences(tokenizer, texts), order, eos, probe, source)


def read_sentences(path: str | Path) -> list[str]:
    """The sentences of a text file, one a line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"text file {path} not found (give one sentence a line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (give one sentence a line)") from None
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise UserError(f"{path} has no sentences (give one sentence a line)")
    return sentences


def split_sentences(data, split: str) -> list[str]:
    """The transcripts of ``split`` of ``data`` (a ``DataConfig``), read without the audio."""
    from .sources import open_source

    source = open_source(data, progress=False)
    source.check_split(split)
    return [row.text for row in source.rows(split) if row.text and row.text.strip()]


def build_lm_file(
    out: str | Path,
    tokenizer,
    texts: list[str] | None = None,
    data=None,
    split: str | None = None,
    order: int = DEFAULT_ORDER,
    source: str = "",
) -> NgramLM:
    """``build-lm``: the model of ``texts``, or of ``split`` of ``data``, written to ``out``."""
    if texts is None:
        texts = split_sentences(data, split)
        source = source or f"{data.source} {split}"
    lm = build_lm(tokenizer, texts, order, source)
    lm.save(out)
    return lm
