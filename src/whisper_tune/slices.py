"""Slices of a split in the Hugging Face style (``validated[:80%]``, ``validated[80%:]``)
that never cut a speaker in two.

A Common Voice release ships ``validated.tsv`` but a sample of one (or a language too
small for Mozilla's own split) has no train/dev/test files, so users make a split of
their own. A plain row slice would put the same volunteer's clips on both sides, and the
held-out WER would then measure voices the model was trained on. So when rows name their
speaker (Common Voice's ``client_id``, a manifest's ``speaker`` column), they are ordered
by a stable hash of the speaker (then the audio path) and a slice is cut only between
speakers: each bound moves to the speaker boundary nearest to it, and ``[:80%]`` and
``[80%:]`` share that boundary, so together they hold every row once and no speaker is
on both sides. The hash does not depend on the file's row order or on the machine, so a
slice is the same on every call. Rows with no speaker are each their own group, kept in
file order (then a slice is the plain Hugging Face one).

Bounds are whole percents (``80%``) or row counts (``500``); negative ones count from the
end (``[-10%:]``). The rows a slice takes are yielded in their file order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UserError

RULE = "speaker-sha256-nearest-edge-v1"  # how rows are ordered and cut; in a sliced cache's fingerprint
_SLICE = re.compile(r"^(?P<name>[^\[\]:]+?)\s*(?:\[(?P<start>[^\[\]:]*):(?P<stop>[^\[\]:]*)\])?$")
_BOUND = re.compile(r"^(?P<value>-?\d+)(?P<percent>%?)$")
_HOW = "write NAME[START:STOP] with whole percents or row counts, e.g. 'validated[:80%]' or 'validated[80%:]'"


@dataclass(frozen=True)
class Row:
    """One utterance before decoding: ``audio`` is a file path or encoded bytes."""

    id: str
    audio: str | bytes | None
    text: str | None
    root: str | None = None  # a folder the audio path must stay inside (Common Voice's clips/), else rejected
    speaker: str | None = None  # Common Voice's client_id: a split's slice never cuts a speaker in two


@dataclass(frozen=True)
class Bound:
    """One end of a slice: ``value`` percent of the rows, or ``value`` rows."""

    value: int
    percent: bool

    def rows(self, total: int) -> float:
        """The row position this bound asks for, in ``[0, total]``."""
        at = self.value * total / 100 if self.percent else self.value
        return min(max(total + at if self.value < 0 else at, 0), total)


@dataclass(frozen=True)
class SplitPart:
    """One ``+``-joined part of a split: a split name and, when sliced, its bounds."""

    name: str
    start: Bound | None = None
    stop: Bound | None = None
    text: str = ""  # as the user wrote it, for messages

    @property
    def whole(self) -> bool:
        return self.start is None and self.stop is None


def _bound(text: str, split: str) -> Bound | None:
    text = text.strip()
    if not text:
        return None
    match = _BOUND.match(text)
    if not match:
        raise UserError(f"split {split!r} has the bound {text!r}: {_HOW}")
    bound = Bound(int(match["value"]), bool(match["percent"]))
    if bound.percent and abs(bound.value) > 100:
        raise UserError(f"split {split!r} has the bound {text!r}, beyond 100%: {_HOW}")
    return bound


def parse_part(text: str) -> SplitPart:
    """``"validated[:80%]"`` -> ``SplitPart("validated", None, Bound(80, True))``; a slice
    that does not parse is one UserError saying how to write it."""
    text = text.strip()
    match = _SLICE.match(text)
    if not match or ("[" in text) != (match["start"] is not None):
        raise UserError(f"split {text!r} is not a split name or slice: {_HOW}")
    if match["start"] is None:
        return SplitPart(match["name"].strip(), text=text)
    return SplitPart(match["name"].strip(), _bound(match["start"], text), _bound(match["stop"], text), text)


def folder_name(split: str) -> str:
    """``split`` as a folder name without shell-glob or Windows-reserved characters, slices
    kept apart: ``validated[:80%]`` -> ``validated_to80pc``, ``validated[80%:]`` -> ``validated_80pcto``."""
    for old, new in (("[", "_"), ("]", ""), (":", "to"), ("%", "pc"), (" ", "")):
        split = split.replace(old, new)
    return split


def speaker_order(rows: Sequence[Row]) -> list[list[int]]:
    """Row indices grouped by speaker, groups ordered by a stable hash of the speaker and
    rows within a group by audio path; rows with no speaker are one-row groups in file order."""
    if not any(r.speaker for r in rows):
        return [[i] for i in range(len(rows))]
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.speaker or f"\0row:{row.id}:{i}", []).append(i)

    def digest(speaker: str) -> str:
        return hashlib.sha256(speaker.encode("utf-8")).hexdigest()

    def path(i: int) -> str:
        return rows[i].audio if isinstance(rows[i].audio, str) else rows[i].id

    return [sorted(groups[s], key=lambda i: (path(i), i)) for s in sorted(groups, key=lambda s: (digest(s), s))]


def _nearest(edges: list[int], at: float) -> int:
    """The index of the group edge nearest to row position ``at`` (the lower one on a tie)."""
    return min(range(len(edges)), key=lambda k: (abs(edges[k] - at), k))


def take(rows: Sequence[Row], part: SplitPart, where: str) -> list[Row]:
    """The rows ``part`` slices out of ``rows`` (all rows of ``part.name``), speakers whole;
    an empty result is one UserError, not an empty split."""
    if part.whole:
        return list(rows)
    groups = speaker_order(rows)
    edges = [0]
    for group in groups:
        edges.append(edges[-1] + len(group))
    total = edges[-1]
    lo = _nearest(edges, part.start.rows(total)) if part.start else 0
    hi = _nearest(edges, part.stop.rows(total)) if part.stop else len(groups)
    chosen = sorted(i for group in groups[lo:hi] for i in group)
    if not chosen:
        speakers = "speakers" if any(r.speaker for r in rows) else "rows"
        raise UserError(
            f"split {part.text!r} of {where} holds no clips ({total} clips in {len(groups)} {speakers} in "
            f"{part.name!r}, cut only between {speakers}): widen the slice, e.g. '{part.name}[80%:]'"
        )
    return [rows[i] for i in chosen]
