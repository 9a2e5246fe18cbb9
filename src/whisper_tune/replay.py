"""``data.replay``: a share of another language's clips in the fine-tune, against forgetting it.

A LoRA fine-tune on one language moves the shared decoder toward that language alone; the
other languages the base knew get worse and nothing in the run says so (Vietnamese went
from 43.2 to 48.8 % WER after a fine-tune in issue 24). Replaying a small share of clips
in a language the base already knows, labelled with that language's own token, keeps a
gradient pulling the other way. The replayed split is prepared like the training split
(same checks and cache, its labels prefixed with its own language), into the run folder;
which clips replace which samples is ``preserve.Preserver``'s seeded draw.
"""

from __future__ import annotations

from pathlib import Path

from .config import DataConfig, ReplaySettings
from .processor import resolve_language


def replay_data(data: DataConfig) -> DataConfig | None:
    """The DataConfig of ``data.replay`` (its source and language, the run's task and clip
    length), or None when replay is off."""
    replay: ReplaySettings = data.replay
    if not replay.share:
        return None
    return DataConfig(
        source=replay.source,
        language=resolve_language(replay.language),
        task=data.task,
        train_split=replay.split,
        eval_split=replay.split,
        max_seconds=data.max_seconds,
    )


def check_replay(data: DataConfig, progress: bool = True) -> None:
    """Refuse, before anything loads, a replay whose language or source split is wrong."""
    from .sources import open_source

    replayed = replay_data(data)
    if replayed is not None:
        open_source(replayed, progress=progress).check_split(replayed.train_split)


def prepare_replay(data: DataConfig, out: Path, processor: str, progress: bool = True) -> Path | None:
    """The prepared folder of the replayed split (prepared into ``out`` when its source is not
    a prepared folder already), or None when replay is off."""
    from .prepare import prepared_folder

    replayed = replay_data(data)
    if replayed is None:
        return None
    return prepared_folder(replayed, replayed.train_split, out, processor, progress=progress)


def replay_record(data: DataConfig, clips: int) -> dict:
    """What ``run.json`` says was replayed: source, language, split, share and the clip count."""
    replay = data.replay
    return {
        "source": replay.source,
        "language": resolve_language(replay.language),
        "split": replay.split,
        "share": replay.share,
        "clips": clips,
    }
