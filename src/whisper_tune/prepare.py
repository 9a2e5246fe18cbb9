"""The prepare stage: decode, check, resample and tokenize a split into an Arrow cache.

Layout of a prepared folder::

    OUT/shards/shard-00000.arrow     # id, audio (16 kHz float32), text, labels, duration
    OUT/shards/shard-00000.rejected.jsonl
    OUT/rejected.jsonl               # every skipped clip: id, audio, reason, detail
    OUT/prepared.json                # source, split, language, counts, fingerprint
    OUT/.lock                        # locked (flock) by the prepare writing here; its pid

Work is committed shard by shard (a shard's Arrow file is renamed into place last), so a
re-run after an interruption skips finished shards, and a re-run of a finished folder
does nothing; a second prepare into a folder being written stops at once. Nothing is
dropped silently: each skipped row is listed with its reason, and a folder whose every row
was rejected is an error when loaded, not an empty dataset.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, prepare runs unlocked
    fcntl = None

from .audio import NOT_FINITE, SILENCE_DB, AudioError, duration, load_audio, rms_db
from .checkpoint import write_json_atomically
from .config import MAX_SECONDS, TASKS, DataConfig
from .errors import UserError
from .features import label_ids, set_prefix
from .processor import MAX_LABEL_TOKENS, load_tokenizer, processor_path, resolve_language
from .slices import RULE as SLICE_RULE
from .sources import DataSource, PreparedSource, Row, open_source, split_parts

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCK = ".lock"  # held (flock) by the prepare writing the folder; holds its pid
REASONS = {
    "missing": "audio file not found",
    "not_a_file": "audio path is a folder or other non-file",
    "outside_clips": "audio path leaves the Common Voice clips/ folder",
    "undecodable": "audio cannot be decoded (or is truncated)",
    "empty": "audio has no samples",
    "not_finite": NOT_FINITE,
    "silent": f"audio is silent (RMS below {SILENCE_DB:g} dBFS)",
    "too_long": f"audio longer than {MAX_SECONDS:g} s",
    "labels_too_long": f"transcript longer than {MAX_LABEL_TOKENS} tokens",
    "missing_text": "transcript missing",
    "empty_text": "transcript empty",
    "no_words": "transcript has no letters or digits (only punctuation, symbols or invisible characters)",
    "duplicate": "same audio and transcript as an earlier row",
    "conflicting_text": "same audio as an earlier row, with another transcript (the first is kept)",
    "control_chars": "transcript holds control characters (NUL, terminal escape codes)",
}


@dataclass(frozen=True)
class PrepareOptions:
    """What a prepared split depends on besides its source."""

    language: str = DataConfig.language  # Whisper language code or English name
    task: str = "transcribe"  # or "translate"
    processor: str = "bundled"  # tokenizer source: bundled offline build, a model folder or hub id
    max_seconds: float = MAX_SECONDS  # longer clips are rejected, never truncated
    silence_db: float = SILENCE_DB  # clips quieter than this are rejected as silent
    max_label_tokens: int = MAX_LABEL_TOKENS  # Whisper's decoder length limit

    def __post_init__(self):
        object.__setattr__(self, "language", resolve_language(self.language))
        if self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}: use 'transcribe' or 'translate'")
        if not 0 < self.max_seconds <= MAX_SECONDS:
            raise UserError(f"max_seconds must be in (0, {MAX_SECONDS:g}], got {self.max_seconds}")

    @classmethod
    def from_data(cls, data: DataConfig, processor: str = "bundled") -> PrepareOptions:
        """The options a ``DataConfig`` implies (the one mapping from data settings)."""
        return cls(language=data.language, task=data.task, processor=processor, max_seconds=data.max_seconds)


@dataclass
class PrepareResult:
    """Counts of one prepare run (or of the finished folder it found)."""

    out: Path
    prepared: int
    rejected: dict[str, int]
    audio_seconds: float
    seconds: float
    reused: bool = False
    processed_now: int = 0  # rows decoded in this run (0 when everything was cached)

    @property
    def clips_per_s(self) -> float:
        return self.processed_now / self.seconds if self.seconds > 0 else 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


# ---- per-row work, run in worker processes -------------------------------------------

_WORKER: dict = {}


def _init_worker(processor: str, options: PrepareOptions) -> None:
    tokenizer = load_tokenizer(processor)
    set_prefix(tokenizer, options.language, options.task)
    _WORKER.update(tokenizer=tokenizer, options=options)


def _reject(row: Row, reason: str, detail: str = "") -> tuple[str, dict]:
    audio = row.audio if isinstance(row.audio, str) or row.audio is None else f"<{len(row.audio)} bytes>"
    return "rejected", {"id": row.id, "audio": audio, "reason": reason, "detail": detail or REASONS[reason]}


def has_words(text: str) -> bool:
    """True when ``text`` holds a letter, mark or digit: once punctuation (a danda ``।``),
    symbols, spaces and invisible format characters (U+200B..U+200D, U+FEFF) are gone,
    a transcript with nothing left would teach the model to print noise for speech."""
    return any(unicodedata.category(ch)[0] in "LMN" for ch in text)


def _outside(audio: str, root: str) -> bool:
    """True when ``audio`` resolves (``..``, an absolute path, symlinks) outside ``root``."""
    return not Path(audio).resolve().is_relative_to(Path(root).resolve())


def process_row(row: Row) -> tuple[str, dict]:
    """("ok", example) or ("rejected", {id, audio, reason, detail}) for one row."""
    options: PrepareOptions = _WORKER["options"]
    if row.text is None:
        return _reject(row, "missing_text")
    text = " ".join(row.text.split())
    if not text:
        return _reject(row, "empty_text")
    if any(unicodedata.category(ch) == "Cc" for ch in text):  # NUL, ESC [ ... m: never speech
        shown = text.encode("unicode_escape").decode()[:80]
        return _reject(row, "control_chars", f"{REASONS['control_chars']}: {shown}")
    if not has_words(text):
        return _reject(row, "no_words", f"{REASONS['no_words']}: {text.encode('unicode_escape').decode()[:80]}")
    if row.audio is None:
        return _reject(row, "missing", "no audio path in this row")
    if row.root and isinstance(row.audio, str) and _outside(row.audio, row.root):
        return _reject(row, "outside_clips", f"{row.audio} resolves to {Path(row.audio).resolve()}, not in {row.root}")
    try:
        audio = load_audio(row.audio)
    except AudioError as e:
        return _reject(row, e.reason, e.detail)
    if audio.size == 0:
        return _reject(row, "empty", "decodes to 0 samples: the file holds a header and no audio")
    seconds = duration(audio)
    if seconds > options.max_seconds:
        return _reject(row, "too_long", f"{seconds:.1f} s > {options.max_seconds:g} s")
    level = rms_db(audio)
    if level < options.silence_db:
        return _reject(row, "silent", f"RMS {level:.1f} dBFS < {options.silence_db:g} dBFS")
    labels = label_ids(_WORKER["tokenizer"], text)
    if len(labels) > options.max_label_tokens:
        return _reject(row, "labels_too_long", f"{len(labels)} tokens > {options.max_label_tokens}")
    return "ok", {"id": row.id, "audio": audio, "text": text, "labels": labels, "duration": seconds}


# ---- the stage -----------------------------------------------------------------------


def _features():
    from datasets import Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "audio": List(Value("float32")),
            "text": Value("string"),
            "labels": List(Value("int32")),
            "duration": Value("float32"),
        }
    )


def _fingerprint(source: DataSource, split: str | None, options: PrepareOptions, processor: str) -> dict:
    """What the cache depends on; the prefix ids pin the tokenizer's language-token layout
    (read from a tokenizer of its own: setting the prefix changes the tokenizer)."""
    tokenizer = load_tokenizer(processor)
    set_prefix(tokenizer, options.language, options.task)
    sliced = split is not None and not all(part.whole for part in split_parts(split))
    return {
        "format": FORMAT_VERSION,
        "source": source.describe(),
        "split": split,  # a slice's bounds too: validated[:80%] and validated[80%:] are two caches
        "options": asdict(options) | {"processor": None},
        "tokenizer": {"size": len(tokenizer), "prefix": tokenizer.prefix_tokens},
    } | ({"slices": SLICE_RULE} if sliced else {})  # unsliced caches made before slices stay valid


def _write_shard(shards: Path, index: int, results: list[tuple[str, dict]]) -> None:
    """Write one shard's rejections and examples under temporary names (this process's
    pid in them), then rename them into place; a full disk is a UserError saying what to do."""
    from datasets.arrow_writer import ArrowWriter

    name, pid = f"shard-{index:05d}", os.getpid()
    tmp_rej, tmp = shards / f".{name}.rejected.jsonl.tmp.{pid}", shards / f".{name}.arrow.tmp.{pid}"
    try:
        rejected = [r for kind, r in results if kind == "rejected"]
        tmp_rej.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected), encoding="utf-8")
        tmp_rej.rename(shards / f"{name}.rejected.jsonl")
        writer = ArrowWriter(features=_features(), path=str(tmp))
        for kind, example in results:
            if kind == "ok":
                writer.write(example)
        writer.finalize()
        writer.close()
        tmp.rename(shards / f"{name}.arrow")  # the commit point of the shard
    except OSError as e:
        tmp_rej.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        if _disk_full(e):
            raise UserError(
                f"no space left on the disk of {shards.parent} while writing {name}: free space and re-run the same "
                f"command (the finished shards are kept and it resumes from {name})"
            ) from None
        raise


def _disk_full(e: OSError) -> bool:
    """ENOSPC or a quota, also from pyarrow, which raises OSError without an errno."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e)


def _row_key(row: Row) -> tuple | None:
    """What makes two rows the same clip: the audio (its absolute path, or a digest of its
    bytes) and the transcript with spaces collapsed; None for rows rejected anyway."""
    if row.audio is None or row.text is None:
        return None
    audio = hashlib.sha1(row.audio).hexdigest() if isinstance(row.audio, bytes) else os.path.abspath(row.audio)
    return audio, " ".join(row.text.split())


def _duplicates(chunk: list[Row], seen: dict[tuple, str]) -> list[tuple[str, dict] | None]:
    """Per row, its rejection when an earlier row of this run (``seen``: key -> first id) had
    the same audio and text, else None; a repeated pair would weigh one clip twice in training
    and leak between splits. Run in order in the main process, so the first one is kept."""
    verdicts = []
    for row in chunk:
        key = _row_key(row)
        if key is not None and key in seen:
            verdicts.append(_reject(row, "duplicate", f"same audio and text as the earlier row {seen[key]}"))
            continue
        if key is not None and (key[0],) in seen:
            first = seen[(key[0],)]
            verdicts.append(_reject(row, "conflicting_text", f"same audio as the earlier row {first}, another text"))
            continue
        if key is not None:
            seen[key] = seen[(key[0],)] = row.id
        verdicts.append(None)
    return verdicts


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def _summarize(out: Path) -> tuple[int, Counter, float]:
    """Counts from the shards on disk, so a resumed run reports the whole split."""
    from datasets import Dataset

    prepared, seconds, reasons = 0, 0.0, Counter()
    for arrow in sorted((out / "shards").glob("shard-*.arrow")):
        ds = Dataset.from_file(str(arrow))
        prepared += len(ds)
        seconds += float(sum(ds["duration"])) if len(ds) else 0.0
    lines = []
    for rej in sorted((out / "shards").glob("shard-*.rejected.jsonl")):
        for line in rej.read_text(encoding="utf-8").splitlines():
            lines.append(line)
            reasons[json.loads(line)["reason"]] += 1
    (out / "rejected.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return prepared, reasons, seconds


def _existing_meta(out: Path, fingerprint: dict) -> dict | None:
    """The folder's ``prepared.json`` when it records this same preparation (finished or
    interrupted), None for a new or empty folder; a folder holding anything else is refused."""
    meta_path = out / "prepared.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{meta_path} is damaged: delete {out} and prepare again") from None
        if meta.get("fingerprint") != fingerprint:
            raise UserError(
                f"{out} holds a different preparation ({meta.get('source', {}).get('location')}, "
                f"split {meta.get('split')}): choose another --out or delete that folder"
            )
        return meta
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise UserError(f"{out} exists and is not a prepared folder: choose another --out or empty it")
    return None


def _write_meta(out: Path, meta: dict) -> None:
    """Write ``prepared.json`` whole or not at all (an interrupted write leaves the old one)."""
    write_json_atomically(out / "prepared.json", meta)


def _start_folder(out: Path, fingerprint: dict, split: str | None, options: PrepareOptions) -> dict:
    """The folder's ``prepared.json``: the finished or interrupted record of this same
    preparation, or a new one; a folder holding anything else is refused."""
    meta = _existing_meta(out, fingerprint)
    if meta is not None:
        return meta
    meta = {
        "fingerprint": fingerprint,
        "source": fingerprint["source"],
        "split": split,
        "language": options.language,
        "task": options.task,
        "processor": options.processor,
        "complete": False,
    }
    _write_meta(out, meta)
    (out / "shards").mkdir(exist_ok=True)  # after prepared.json: a folder never looks foreign to a second run
    return meta


@contextlib.contextmanager
def _locked(out: Path):
    """Hold an exclusive lock on ``out`` (``OUT/.lock``) while preparing into it: two
    prepares writing one folder would interleave shards; the second one stops at once."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a+", encoding="utf-8") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip()
                raise UserError(
                    f"another prepare{f' (pid {holder})' if holder else ''} is writing {out}: wait for it to "
                    f"finish, or choose another --out"
                ) from None
            except OSError as e:  # a file system without locks (some network mounts)
                log.warning("cannot lock %s (%s): make sure no other prepare writes there", out, e)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield  # closing the file releases the lock


def _remove_stale(shards: Path) -> None:
    """Delete temporary shard files a killed run left (under the lock, none is in use)."""
    for tmp in shards.glob(".shard-*.tmp*"):
        tmp.unlink(missing_ok=True)


def _process_shards(
    source: DataSource,
    split: str | None,
    shards: Path,
    processor: str,
    options: PrepareOptions,
    num_proc: int,
    shard_size: int,
    progress: bool,
) -> int:
    """Decode and tokenize every shard not on disk yet; returns the rows processed now."""
    from tqdm.auto import tqdm

    bar = tqdm(total=source.count(split), unit="clip", desc=f"prepare {split or 'all'}", disable=not progress)
    processed, pool = 0, None
    if num_proc > 1:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        pool = ctx.Pool(num_proc, initializer=_init_worker, initargs=(processor, options))
    else:
        _init_worker(processor, options)
    seen: dict[tuple, str] = {}  # over finished shards too, so a resumed run rejects the same rows
    try:
        for index, chunk in enumerate(_chunks(source.rows(split), shard_size)):
            duplicates = _duplicates(chunk, seen)
            if (shards / f"shard-{index:05d}.arrow").exists():
                bar.update(len(chunk))
                continue
            todo = [row for row, dup in zip(chunk, duplicates) if dup is None]
            mapped = iter(pool.imap(process_row, todo, chunksize=4) if pool else map(process_row, todo))
            results = []
            for dup in duplicates:
                results.append(dup or next(mapped))
                bar.update(1)
            _write_shard(shards, index, results)
            processed += len(chunk)
    finally:
        bar.close()
        if pool:
            pool.terminate()
    return processed


def prepare(
    source: DataSource,
    split: str | None,
    out_dir: str | Path,
    options: PrepareOptions | None = None,
    num_proc: int | None = None,
    shard_size: int = 256,
    progress: bool = True,
) -> PrepareResult:
    """Prepare ``split`` of ``source`` into ``out_dir`` (see the module docstring).

    ``num_proc`` worker processes decode and tokenize (default: all cores, at most 8);
    ``num_proc=1`` works in-process, which is easiest to debug.
    """
    options = options or PrepareOptions()
    start = time.perf_counter()
    out = Path(out_dir)
    processor = processor_path(options.processor)
    fingerprint = _fingerprint(source, split, options, processor)
    meta = _existing_meta(out, fingerprint)  # before the lock: a finished folder may be read-only
    if meta is None or not meta.get("complete"):
        with _locked(out):
            meta = _start_folder(out, fingerprint, split, options)
            if not meta.get("complete"):
                return _finish(source, split, out, meta, processor, options, num_proc, shard_size, progress, start)
    elapsed = time.perf_counter() - start
    return PrepareResult(out, meta["prepared"], meta["rejected"], meta["audio_seconds"], elapsed, reused=True)


def _finish(source, split, out, meta, processor, options, num_proc, shard_size, progress, start) -> PrepareResult:
    """Process the shards not on disk yet and record the finished folder (under the lock)."""
    _remove_stale(out / "shards")
    num_proc = num_proc or min(os.cpu_count() or 1, 8)
    processed = _process_shards(source, split, out / "shards", processor, options, num_proc, shard_size, progress)
    try:
        prepared, reasons, audio_seconds = _summarize(out)
        meta |= {
            "complete": True,
            "prepared": prepared,
            "rejected": dict(sorted(reasons.items())),
            "audio_seconds": round(audio_seconds, 3),
        }
        _write_meta(out, meta)
    except OSError as e:
        if _disk_full(e):
            raise UserError(f"no space left on the disk of {out}: free space and re-run the same command") from None
        raise
    if not prepared:
        log.warning("%s: no clip prepared, %d rejected (see %s)", out, sum(reasons.values()), out / "rejected.jsonl")
    return PrepareResult(
        out, prepared, meta["rejected"], audio_seconds, time.perf_counter() - start, processed_now=processed
    )


def load_prepared(out_dir: str | Path):
    """The prepared examples of a finished folder as one memory-mapped ``datasets.Dataset``."""
    from datasets import Dataset, concatenate_datasets

    out = Path(out_dir)
    meta_path = out / "prepared.json"
    if not meta_path.exists() or not json.loads(meta_path.read_text(encoding="utf-8")).get("complete"):
        raise UserError(f"{out} is not a finished prepared folder: run 'whisper-tune prepare --out {out}' first")
    parts = [Dataset.from_file(str(p)) for p in sorted((out / "shards").glob("shard-*.arrow"))]
    parts = [p for p in parts if len(p)]
    if not parts:
        raise UserError(nothing_prepared(out))
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def nothing_prepared(out: Path) -> str:
    """Why a finished folder holds no clip: its rejections by reason, or an empty split."""
    meta = json.loads((out / "prepared.json").read_text(encoding="utf-8"))
    rejected = meta.get("rejected") or {}
    if not rejected:
        return f"{out} holds no clips: split {meta.get('split')!r} of {meta['source'].get('location')} has no rows"
    reasons = ", ".join(f"{reason} {n}" for reason, n in rejected.items())
    return (
        f"{out} holds no clips: all {sum(rejected.values())} rows were rejected ({reasons}); "
        f"see {out / 'rejected.jsonl'} for each clip and why"
    )


def prepared_folder(
    data: DataConfig, split: str, out: Path, processor: str, num_proc: int | None = None, progress: bool = True
) -> Path:
    """The finished prepared folder of ``split`` for a ``DataConfig``, whatever its source:
    ``out`` (prepared now, or reused when done already), or the source itself when it is a
    prepared folder."""
    source = open_source(data, progress=progress)
    if isinstance(source, PreparedSource):
        return source.folder
    options = PrepareOptions.from_data(data, processor)
    result = prepare(source, split, out, options, num_proc=num_proc, progress=progress)
    if not result.prepared:
        raise UserError(nothing_prepared(Path(out)))
    if result.rejected_total:
        log.warning("%s: %d clips rejected, listed in %s", split, result.rejected_total, Path(out) / "rejected.jsonl")
    return Path(out)


def prepare_split(
    data: DataConfig, split: str, out: Path, processor: str, num_proc: int | None = None, progress: bool = True
):
    """The prepared dataset of ``split`` for a ``DataConfig`` (see :func:`prepared_folder`)."""
    return load_prepared(prepared_folder(data, split, out, processor, num_proc=num_proc, progress=progress))
