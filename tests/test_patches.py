"""The table of patches to transformers' private Whisper code (issue 26): every patch the
package makes is a row, each row fits the installed transformers, and a row that does not fit
falls back with a warning (or, where required, refuses in one line)."""

import logging

import pytest

import whisper_tune.augment  # noqa: F401 - registers its row
import whisper_tune.encoder_window  # noqa: F401 - registers its row
import whisper_tune.inference.generate  # noqa: F401 - registers its row
import whisper_tune.modeling  # noqa: F401 - registers its row
import whisper_tune.speedups  # noqa: F401 - registers its rows
from whisper_tune.errors import UserError
from whisper_tune.patches import PATCHES, Patch, register, usable

EXPECTED = {
    "half_norms",
    "lean_attention",
    "checkpointing",
    "compile",
    "window_scores",
    "spec_augment_masks",
    "own_generation_config",
    "short_encoder_window",
}


def test_every_patch_is_a_row():
    assert set(PATCHES) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_row_fits_the_installed_transformers(name, tiny_model_dir):
    """The internals each patch relies on are there in the transformers these tests run on
    (a row whose fit check needs the model gets the tiny one)."""
    from transformers import GenerationConfig, WhisperForConditionalGeneration

    patch = PATCHES[name]
    subject = {"own_generation_config": GenerationConfig()}.get(name)
    if subject is None and name in ("lean_attention", "checkpointing", "compile", "half_norms"):
        subject = WhisperForConditionalGeneration.from_pretrained(str(tiny_model_dir))
    assert usable(patch, subject)


def test_a_patch_that_does_not_fit_warns_and_a_required_one_refuses(caplog):
    loose = Patch("test_loose", "5.17", lambda m: False, fallback="transformers' own code")
    with caplog.at_level(logging.WARNING, logger="whisper_tune.patches"):
        assert not usable(loose)
    assert "test_loose" in caplog.text and "transformers' own code" in caplog.text
    with pytest.raises(UserError, match="install transformers 5.x"):
        usable(Patch("test_required", "5.17", lambda m: False, required=True))
    old = Patch("test_old_major", "4.46", lambda m: True)
    assert not usable(old)  # another major version: not trusted even where the names fit


def test_a_name_is_registered_once():
    first = register(Patch("test_once", "5.17", lambda m: True))
    assert register(first) is first
    with pytest.raises(ValueError, match="test_once"):
        register(Patch("test_once", "5.17", lambda m: True))
    del PATCHES["test_once"]


def test_window_scores_fall_back_to_transformers_own_generate(monkeypatch, tiny_model_dir):
    """Where the hooks do not fit, robust decoding still runs, without the scores."""
    import torch

    from whisper_tune.inference import generate
    from whisper_tune.modeling import load_for_inference

    loaded = load_for_inference(str(tiny_model_dir), None, torch.device("cpu"), language="mr")
    monkeypatch.setitem(PATCHES, "window_scores", Patch("window_scores", "5.17", lambda m: False))
    monkeypatch.setattr(generate, "WINDOW_SCORES", PATCHES["window_scores"])
    with generate.scored_windows(loaded.model, loaded.processor.tokenizer) as scores:
        assert scores == {}
    inner = loaded.model
    assert "_need_fallback" not in vars(inner) and "_retrieve_compression_ratio" not in vars(inner)
