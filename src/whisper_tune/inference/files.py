"""Files in, Transcripts out: the one per-file loop (read each file or report why not, decode
through an :class:`~.engine.Engine`, time it, show progress) and the writing of its outputs.
``whisper-tune transcribe`` is this module over ``open_engine``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..audio import duration
from .engine import Engine
from .options import DecodingOptions
from .results import Transcript, get_writer, output_names, read_or_reason

FILES_PER_GROUP_WINDOWS = 8  # a group of batched files is decoded once it holds 8 batches of windows


def transcribe_files(
    engine: Engine,
    files: list[Path],
    language: str | None = None,
    task: str | None = None,
    decoding: DecodingOptions | None = None,
    batch_size: int = 16,
    progress: bool = True,
    prompt: str | None = None,
    word_timestamps: bool = False,
) -> Iterator[Transcript | tuple[str, str]]:
    """Yield a Transcript, or (path, error) for a file that cannot be read, per file.

    Files the engine decodes together (``Engine.batches``) are read and decoded in groups of
    about :data:`FILES_PER_GROUP_WINDOWS` batches of 30 s windows, so memory stays bounded on a
    large folder; their Transcripts come in input order, and a Transcript's ``seconds`` is its
    group's time shared by audio length. Other files are decoded one by one, as they are read.
    An error comes as soon as its file fails to load, possibly before earlier files' Transcripts."""
    from tqdm.auto import tqdm

    from .longform import cut_windows

    options = dict(
        language=language,
        task=task,
        prompt=prompt,
        decoding=decoding,
        batch_size=batch_size,
        word_timestamps=word_timestamps,
    )
    bar = tqdm(total=len(files), desc="transcribe", unit="file", disable=not progress or len(files) < 2)
    group: list[tuple[Path, np.ndarray]] = []
    windows = 0
    for path in files:
        audio = read_or_reason(path)
        if isinstance(audio, str):
            yield str(path), audio
            bar.update()
            continue
        if not engine.batches(audio, decoding, prompt):
            yield from _decoded(engine, group, options, bar)
            yield from _decoded(engine, [(path, audio)], options, bar)
            windows = 0
            continue
        group.append((path, audio))
        windows += len(cut_windows(audio))
        if windows >= FILES_PER_GROUP_WINDOWS * batch_size:
            yield from _decoded(engine, group, options, bar)
            windows = 0
    yield from _decoded(engine, group, options, bar)
    bar.close()


def _decoded(engine: Engine, group: list[tuple[Path, np.ndarray]], options: dict, bar) -> Iterator[Transcript]:
    """The group's Transcripts (the group is emptied), its time shared by audio length."""
    if not group:
        return
    start = time.perf_counter()
    out = engine.transcribe([a for _, a in group], **options)
    seconds = time.perf_counter() - start
    total = sum(duration(a) for _, a in group) or 1.0
    done = [
        Transcript(str(path), used, duration(audio), segments, seconds * duration(audio) / total)
        for (path, audio), (segments, used) in zip(group, out)
    ]
    group.clear()
    bar.update(len(done))
    yield from done


def write_transcripts(items, files: list[Path], out_dir: Path | None, formats: list[str], say, complain) -> int:
    """Write each Transcript of ``items`` (``transcribe_files``' output) as ``formats`` into
    ``out_dir`` (or ``say`` its text when there is none); ``complain`` each file that failed.
    Returns how many failed. Names are unique per input (``results.output_names``)."""
    names = output_names(files)  # a/x.wav and b/x.wav write a-x.* and b-x.*, not one over the other
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for item in items:
        if isinstance(item, tuple):
            complain(f"{item[0]}: {item[1]}")
            failed += 1
            continue
        if out_dir is None:
            say(f"{item.path} [{item.language}]: {item.text}")
            continue
        written = [get_writer(fmt).write(item, out_dir, names[Path(item.path)]) for fmt in formats]
        say(
            f"{item.path} [{item.language}, {item.duration:.1f} s in {item.seconds:.1f} s] -> "
            + ", ".join(str(w) for w in written)
        )
    return failed
