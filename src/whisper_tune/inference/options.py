"""How a window is decoded, for every back-end: openai/whisper's temperature fallback,
thresholds and beam search as one options object (:class:`DecodingOptions`), with the
constants every back-end shares.

A window whose text compresses too well (a loop: ``compression_ratio_threshold``) or whose
tokens the model itself doubts (mean log-probability under ``logprob_threshold``) is
decoded again at the next temperature; a window the model calls silent
(``no_speech_threshold``) whose tokens are also doubtful is dropped. The names and defaults
are openai/whisper's, so its documentation and faster-whisper's (same names) apply.

Why it is built this way:

* transformers' Whisper ``generate`` implements the fallback itself, for short-form (<= 30 s)
  input as well as long-form (``generate_with_fallback`` runs for both in transformers 5), so
  :meth:`DecodingOptions.generate_kwargs` only maps names. One meaning differs: transformers
  measures the compression ratio on the token ids' bytes, where openai/whisper and
  faster-whisper gzip the window's *text* (which is why transformers' docs suggest 1.35, not
  2.4). ``inference.generate.scored_windows`` puts openai's text measure in for the call,
  so 2.4 means the same on every engine, and records what each window ended with (temperature used, mean
  log-probability, compression ratio, no-speech probability) for ``verbose_json``.
* Sampling is seeded per call (:data:`FALLBACK_SEED`, in a forked RNG): a clip that falls back
  gives the same text every time it is sent, and the caller's random state is untouched.
* Beam search applies at temperature 0 only (sampling at a fallback temperature is one
  sample, as transformers does): ``best_of`` is not offered, so both engines draw one sample.
* ``lm`` (an n-gram file of ``build-lm``) adds shallow fusion (``inference.fusion``): it is
  a path here, loaded by the engine that decodes, so options stay small and comparable.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, replace

from ..errors import UserError

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai: --temperature 0, increment 0.2
FALLBACK_SEED = 0  # sampling at fallback temperatures is reproducible per call
MAX_NEW_TOKENS = 224  # openai's sample_len: tokens per 30 s window, half the decoder's 448 positions
LM_WEIGHT = 0.3  # shallow fusion's weight when --lm is given without --lm-weight (docs/evaluation.md: the study)


@dataclass(frozen=True)
class DecodingOptions:
    """How a window is decoded; defaults are openai/whisper ``transcribe()``'s.

    ``beam_size`` 1 is greedy (openai's CLI uses 5: about 2-3x the decoding time on a CPU).
    A threshold of None switches that check off; ``temperature`` of one value switches the
    fallback off."""

    beam_size: int = 1
    temperature: tuple[float, ...] = FALLBACK_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    lm: str | None = None  # an n-gram language model file (build-lm) fused into decoding; None: none
    lm_weight: float = LM_WEIGHT  # its weight (0: the scores untouched)
    lm_length_bonus: float = 0.0  # added per text token, against the shorter text an LM favours

    def __post_init__(self):
        temps = tuple(
            float(t) for t in (self.temperature if isinstance(self.temperature, (list, tuple)) else [self.temperature])
        )
        object.__setattr__(self, "temperature", temps)
        if not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise UserError(f"beam size must be a whole number from 1 (greedy), not {self.beam_size!r}")
        if not temps or any(not 0.0 <= t <= 1.0 for t in temps) or list(temps) != sorted(temps):
            raise UserError(f"temperatures must be rising numbers from 0 to 1, not {list(temps)}")
        if self.beam_size > 1 and temps[0] > 0:
            raise UserError("beam search decodes at temperature 0: use --temperature 0 with --beam-size above 1")
        if self.compression_ratio_threshold is not None and not self.compression_ratio_threshold > 0:
            raise UserError(f"compression ratio threshold must be above 0, not {self.compression_ratio_threshold}")
        if self.logprob_threshold is not None and not self.logprob_threshold <= 0:
            raise UserError(
                f"log-probability threshold must be 0 or below (a mean log-probability), not {self.logprob_threshold}"
            )
        if self.no_speech_threshold is not None and not 0.0 <= self.no_speech_threshold <= 1.0:
            raise UserError(f"no-speech threshold must be a probability from 0 to 1, not {self.no_speech_threshold}")
        if self.no_speech_threshold is not None and self.logprob_threshold is None:
            raise UserError(
                "the no-speech threshold drops a window only when its log-probability is also low: "
                "give a log-probability threshold"
            )
        if self.lm is not None:
            object.__setattr__(self, "lm", str(self.lm))
        if not (isinstance(self.lm_weight, (int, float)) and 0 <= self.lm_weight < float("inf")):
            raise UserError(f"the language model weight must be a number from 0 up, not {self.lm_weight!r}")
        if not (isinstance(self.lm_length_bonus, (int, float)) and abs(self.lm_length_bonus) < float("inf")):
            raise UserError(f"the length bonus must be a finite number, not {self.lm_length_bonus!r}")

    @classmethod
    def from_temperature(cls, temperature: float = 0.0, increment: float | None = 0.2, **fields) -> DecodingOptions:
        """openai's CLI pair: start at ``temperature`` and step by ``increment`` up to 1 on
        fallback (``increment`` None or 0: that one temperature only)."""
        if increment is not None and increment < 0:
            raise UserError(f"the temperature increment must be 0 or more, not {increment}")
        if not increment or temperature >= 1.0:
            return cls(temperature=(temperature,), **fields)
        steps = int((1.0 - temperature) / increment + 1e-6)
        return cls(temperature=tuple(round(temperature + k * increment, 6) for k in range(steps + 1)), **fields)

    @classmethod
    def greedy(cls) -> DecodingOptions:
        """Plain greedy decoding: no fallback, no thresholds, each window on its own."""
        return cls(1, (0.0,), None, None, None, False)

    def starting_at(self, temperature: float, increment: float = 0.2) -> DecodingOptions:
        """These options with the fallback ramp starting at ``temperature`` (an API request's
        ``temperature``: OpenAI's API also raises it on fallback)."""
        fields = {k: v for k, v in asdict(self).items() if k != "temperature"}
        return DecodingOptions.from_temperature(temperature, increment if len(self.temperature) > 1 else None, **fields)

    def with_fields(self, **changes) -> DecodingOptions:
        return replace(self, **changes)

    @property
    def name(self) -> str:
        plain = replace(self, lm=None, lm_weight=LM_WEIGHT, lm_length_bonus=0.0)
        if plain == DecodingOptions.greedy():
            search = "greedy"
        else:
            search = f"beam {self.beam_size}" if plain == DecodingOptions.beam(self.beam_size) else "robust"
        return search + ("+lm" if self.lm else "")

    @classmethod
    def beam(cls, size: int = 5) -> DecodingOptions:
        """Plain beam search: greedy's settings with ``size`` beams."""
        return replace(cls.greedy(), beam_size=size)

    def describe(self) -> dict:
        """For a report's summary: which decoding made these numbers."""
        return {"name": self.name, **asdict(self), "temperature": list(self.temperature)}

    def generate_kwargs(self) -> dict:
        """Arguments of transformers' Whisper ``generate``. Scores are always returned: the
        log-probability check needs them, and ``inference.generate.scored_windows`` reports them."""
        kwargs = {
            "temperature": self.temperature if len(self.temperature) > 1 else self.temperature[0],
            "compression_ratio_threshold": self.compression_ratio_threshold,
            "logprob_threshold": self.logprob_threshold,
            "no_speech_threshold": self.no_speech_threshold,
            "condition_on_prev_tokens": self.condition_on_previous_text,
            "return_dict_in_generate": True,
            "output_scores": True,
        }
        if self.beam_size > 1:
            kwargs["num_beams"] = self.beam_size
        return kwargs

    def faster_whisper_kwargs(self) -> dict:
        """Arguments of faster-whisper's ``WhisperModel.transcribe`` (it spells the
        log-probability threshold ``log_prob_threshold``)."""
        return {
            "beam_size": self.beam_size,
            "best_of": 1,
            "temperature": list(self.temperature),
            "compression_ratio_threshold": self.compression_ratio_threshold,
            "log_prob_threshold": self.logprob_threshold,
            "no_speech_threshold": self.no_speech_threshold,
            "condition_on_previous_text": self.condition_on_previous_text,
        }


def compression_ratio(text: str) -> float:
    """openai/whisper's measure: raw UTF-8 bytes over zlib-compressed bytes (a loop is high)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


# Files of any length (transcribe, api, serve) are decoded without previous-text conditioning
# unless asked: that is what lets their windows be decoded in batches (longform.py says why),
# and one default for all three is what makes the same file give the same text in each.
FILE_DECODING = {"condition_on_previous_text": False}
