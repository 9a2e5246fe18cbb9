"""The order of training batches: a pure function of (seed, epoch, rank), so that a resumed
run, or a run on another number of processes, sees the batches an uninterrupted one saw.

:func:`epoch_batches` is the order; :class:`EpochBatches` serves it to one DataLoader for
the whole run (its worker processes persist across epochs) as ``(epoch, clip)`` keys, from
which the collator seeds each clip's augmentation.
"""

from __future__ import annotations

import math

import numpy as np

MEGABATCH = 50  # length grouping sorts within windows of 50 batches, as transformers' sampler does


def epoch_batches(
    durations: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool, world: int = 1, rank: int = 0
) -> list[list[int]]:
    """This rank's batches for ``epoch``: a pure function of its arguments, so a resumed run
    sees the same order. With ``group_by_length``, clips are sorted by duration inside
    windows of ``MEGABATCH`` batches, then the batches are shuffled."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(durations))
    if group_by_length:
        window = batch_size * MEGABATCH
        order = np.concatenate(
            [
                w[np.argsort(-durations[w], kind="stable")]
                for w in np.array_split(order, max(1, math.ceil(len(order) / window)))
            ]
        )
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % world if len(batches) >= world else len(batches)
    return batches[:usable][rank::world]


class EpochBatches:
    """:func:`epoch_batches` as a DataLoader batch sampler whose epoch and starting batch are
    set before each pass (:meth:`set_position`), so that one DataLoader, and its worker
    processes (``persistent_workers``), serves every epoch. It runs in the main process:
    the workers only see the indices."""

    def __init__(self, durations: np.ndarray, batch_size: int, seed: int, group_by_length: bool, world: int, rank: int):
        self.durations, self.batch_size, self.seed = durations, batch_size, seed
        self.group_by_length, self.world, self.rank = group_by_length, world, rank
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def _batches(self) -> list[list[int]]:
        return epoch_batches(
            self.durations, self.batch_size, self.seed, self.epoch, self.group_by_length, self.world, self.rank
        )[self.start :]

    def __iter__(self):
        # (epoch, clip) keys: the collator seeds each clip's augmentation with them
        return iter([[(self.epoch, i) for i in batch] for batch in self._batches()])

    def __len__(self) -> int:
        return len(self._batches())
