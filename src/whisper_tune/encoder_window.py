"""Short encoder windows: the encoder sees the batch's longest clip, not 30 s of padding.

Whisper pads every clip to one 30 s window (3000 log-mel frames, 1500 encoder positions).
Common Voice and demo clips last 2-6 s, so most of the encoder's work (and, in decoding,
most of the cross-attention cache) is spent on padding. With ``model.encoder_window:
longest`` the log-mel is cut to the batch's longest clip, rounded up to a whole second
(:data:`STEP_FRAMES`, so a corpus gives a few shapes that caches and compiled graphs reuse),
and the encoder adds the first positional embeddings only, as whisper.cpp's ``audio_ctx``
does. The cut features are the 30 s window's first frames (``logmel.LogMel`` with
``frames``): only the padding is dropped.

It changes what the model computes (self-attention no longer spreads over the padding), so
it is a switch, off (``full``) by default: a model trained with short windows is decoded
with them (``evaluate --encoder-window longest``), and long-form transcription keeps 30 s
windows whatever the switch says. The report card checks the 30 s behaviour of a model
trained this way (non-speech, long-form, time stamps, English).

transformers' ``WhisperEncoder.forward`` refuses any input that is not 3000 frames long:
:func:`allow_short_windows` gives the model's encoder a forward that sends 3000 frames to
transformers' own code (bit-identical to no patch) and a shorter input through
:func:`short_window_forward`, the same steps with the embeddings sliced.
"""

from __future__ import annotations

import math
import types

import torch

from .config import ENCODER_WINDOWS as WINDOWS  # full | longest
from .logmel import HOP_LENGTH, N_FRAMES
from .patches import WRITTEN_FOR, Patch, register, usable

STEP_FRAMES = 100  # windows are whole seconds (100 frames, 50 encoder positions): at most 30 shapes


def window_frames(longest_samples: int, window: str = "full") -> int:
    """Log-mel frames the encoder sees for a batch whose longest clip has ``longest_samples``
    16 kHz samples: 3000 with ``full``, else the clip rounded up to whole seconds (at least
    one, at most 30)."""
    if window not in WINDOWS:
        raise ValueError(f"encoder window must be one of {', '.join(WINDOWS)}, not {window!r}")
    if window == "full":
        return N_FRAMES
    seconds = max(1, math.ceil(int(longest_samples) / (HOP_LENGTH * STEP_FRAMES)))
    return min(N_FRAMES, seconds * STEP_FRAMES)


def _encoder(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.encoder


def _fits(model=None) -> bool:
    """The encoder parts the short forward runs (and transformers' decorators it wraps with)."""
    try:
        from transformers.models.whisper import modeling_whisper as mw

        mw.capture_outputs, mw.merge_with_config_defaults, mw.BaseModelOutput  # noqa: B018
    except (ImportError, AttributeError):
        return False
    if model is None:
        return True
    try:
        encoder = _encoder(model)
    except AttributeError:
        return False
    needed = ("conv1", "conv2", "embed_positions", "layers", "layer_norm", "layerdrop", "dropout")
    return all(hasattr(encoder, name) for name in needed)


SHORT_WINDOWS = register(
    Patch("short_encoder_window", WRITTEN_FOR, _fits, fallback="30 s encoder windows (model.encoder_window: full)")
)


def short_window_forward(self, input_features: torch.Tensor, attention_mask=None, **kwargs):
    """``WhisperEncoder.forward`` (transformers 5.17-5.25) for any even number of frames up
    to 3000: the same convolutions, layers and norm, with the first positional embeddings
    of as many positions as the convolutions give."""
    from transformers.modeling_outputs import BaseModelOutput

    stride = self.conv1.stride[0] * self.conv2.stride[0]
    frames = input_features.shape[-1]
    if frames % stride or not 0 < frames <= self.embed_positions.num_embeddings * stride:
        raise ValueError(
            f"an encoder window of {frames} frames: it must be a multiple of {stride} "
            f"up to {self.embed_positions.num_embeddings * stride}"
        )
    embeds = torch.nn.functional.gelu(self.conv1(input_features))
    embeds = torch.nn.functional.gelu(self.conv2(embeds)).permute(0, 2, 1)
    hidden = embeds + self.embed_positions.weight[: embeds.shape[1]]
    hidden = torch.nn.functional.dropout(hidden, p=self.dropout, training=self.training)
    for layer in self.layers:
        if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
            continue  # LayerDrop, as transformers
        hidden = layer(hidden, None, **kwargs)
    return BaseModelOutput(last_hidden_state=self.layer_norm(hidden))


def _dispatching_forward():
    from transformers.models.whisper.modeling_whisper import capture_outputs, merge_with_config_defaults

    short = merge_with_config_defaults(capture_outputs(short_window_forward))

    def forward(self, input_features, attention_mask=None, **kwargs):
        if (
            input_features.shape[-1]
            == self.embed_positions.num_embeddings * self.conv1.stride[0] * self.conv2.stride[0]
        ):
            return type(self).forward(self, input_features, attention_mask, **kwargs)  # transformers' own
        return short(self, input_features, attention_mask, **kwargs)

    return forward


def allow_short_windows(model) -> bool:
    """Let ``model``'s encoder (a Whisper model, PEFT-wrapped or not) take windows shorter
    than 30 s; 30 s inputs still run transformers' own forward. False (with one warning)
    where this transformers lacks the internals: the caller then keeps 30 s windows."""
    if not usable(SHORT_WINDOWS, model):
        return False
    encoder = _encoder(model)
    if "forward" not in encoder.__dict__:
        encoder.forward = types.MethodType(_dispatching_forward(), encoder)
    return True


def use_encoder_window(model, window: str) -> str:
    """The window ``model`` will be fed (``window`` when the patch fits, else ``full``),
    with the patch applied for ``longest``."""
    window_frames(0, window)  # validates the name
    if window == "longest" and allow_short_windows(model):
        return "longest"
    return "full"
