"""Every place whisper-tune replaces or calls a private part of transformers' Whisper, in one
table: :data:`PATCHES`.

Private internals change without notice between releases. Each entry names the transformers
version it was written and measured against (:attr:`Patch.written_for`) and checks, before
it touches a model, that the internals it relies on are still there (:attr:`Patch.fits`). A
release with another major version, or without those internals, gets transformers' own code
and one warning instead of a silently wrong patch; a patch that cannot be done without
(``required``) is a UserError naming the version to install. pyproject.toml bounds
transformers below the next major version for the same reason.

The entries are registered by the modules that own the patches (``speedups`` for training
speed, ``augment`` for SpecAugment's masks, ``inference.generate`` for the window scores of
robust decoding, ``modeling`` for the generation config), so each stays next to its code,
while a test walks this one table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .errors import UserError

log = logging.getLogger(__name__)

WRITTEN_FOR = "5.17"  # the transformers version the patches were measured on (also checked on 5.24)


@dataclass(frozen=True)
class Patch:
    """One change to (or call into) transformers' private Whisper code, with what it relies on."""

    name: str
    written_for: str  # transformers version it was written and measured against
    fits: Callable[[object], bool]  # the internals it relies on are there (given the model, or None)
    required: bool = False  # a missing internal is an error rather than transformers' own code
    fallback: str = "using transformers' own code (slower)"  # what happens instead, for the warning


PATCHES: dict[str, Patch] = {}


def register(patch: Patch) -> Patch:
    """Add ``patch`` to :data:`PATCHES` (once per name)."""
    if patch.name in PATCHES and PATCHES[patch.name] is not patch:
        raise ValueError(f"a patch named {patch.name!r} is registered already")
    PATCHES[patch.name] = patch
    return patch


def usable(patch: Patch, model=None) -> bool:
    """Whether ``patch`` may touch ``model``: the same transformers major version, and its
    internals there. When not: a UserError for a required patch, else one warning and False."""
    import transformers

    installed = transformers.__version__.split(".")[0]
    if installed == patch.written_for.split(".")[0] and patch.fits(model):
        return True
    message = (
        f"patch {patch.name} was written for transformers {patch.written_for} and does not fit "
        f"transformers {transformers.__version__}"
    )
    if patch.required:
        raise UserError(f"{message}: install transformers {patch.written_for.split('.')[0]}.x")
    log.warning("%s: %s", message, patch.fallback)
    return False
