"""Where speech comes from: Common Voice release folders, manifests, Hugging Face datasets.

Every source yields the same :class:`Row` (an id, the audio as a path or encoded bytes,
the transcript), so decoding, validation and feature extraction happen once, in
``prepare``, whatever the corpus. Hugging Face audio columns are read undecoded
(``Audio(decode=False)``) for the same reason: datasets would otherwise decode through
torchcodec with its own resampler, and our front end must be the same in training and
inference.

``open_source(data)`` takes a ``DataConfig`` (or one string) and knows every kind:

* ``demo``: the demo corpus (espeak-ng Marathi, made in the cache on first use);
* a folder that ``prepare`` made (``prepared.json``): used as it is, nothing is decoded;
* ``cv:PATH`` or a folder holding Common Voice TSVs (``train.tsv``, ``dev.tsv``,
  ``test.tsv``, ``validated.tsv``, ``clips/``), or its parent holding ``<language>/``;
* ``mdc:DATASET_ID``: a Common Voice release on the Mozilla Data Collective, downloaded and
  unpacked into the cache once (``whisper_tune.mdc``), then read as the folder above;
* ``manifest:PATH`` or a ``.csv``/``.tsv``/``.jsonl``/``.json`` file of audio path + text;
* ``hf:ID_OR_FOLDER``, a ``save_to_disk``/parquet folder, or a hub id like ``owner/name``.

Splits combine with ``+`` (``train+dev``) and take slices in the Hugging Face style
(``validated[:80%]``), cut only between speakers where rows name them (see ``slices``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from .config import DataConfig
from .errors import UserError
from .slices import Row, SplitPart, parse_part, take  # Row: also this module's API

log = logging.getLogger(__name__)

CV_SPLITS = ("train", "dev", "test", "validated", "other", "invalidated")
CV_SPLIT_ALIASES = {"validation": "dev"}  # the names the Hub's Common Voice used
# TSVs of a release that list sentences, reports or durations, not clips
CV_NOT_SPLITS = ("reported", "clip_durations", "validated_sentences", "unvalidated_sentences")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
AUDIO_COLUMN_GUESSES = ("audio", "path", "audio_path", "audio_filepath", "file", "filename")
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
TEXT_COLUMN_GUESSES = ("text", "sentence", "transcription", "transcript", "normalized_text")
SPEAKER_COLUMNS = ("client_id", "speaker", "speaker_id")  # who speaks: slices keep a speaker whole
_CSV_QUOTED = re.compile(r'^"((?:[^"]|"")*)"$', re.DOTALL)


def split_names(split: str) -> list[str]:
    """``"train+dev"`` -> ``["train", "dev"]``; each part may be a slice (``validated[:80%]``)."""
    names = [s.strip() for s in split.split("+") if s.strip()]
    if not names:
        raise UserError(f"empty split {split!r}: name one, such as 'train' or 'train+dev'")
    return names


def split_parts(split: str) -> list[SplitPart]:
    """``"train+validated[:80%]"`` -> its parts, each slice parsed (a bad one is a UserError)."""
    return [parse_part(name) for name in split_names(split)]


def _speaker(record: dict) -> str | None:
    """The speaker a record names (see ``SPEAKER_COLUMNS``), None when it names none."""
    for column in SPEAKER_COLUMNS:
        value = _clean_text(record.get(column))
        if value and value.strip():
            return value.strip()
    return None


def unquote(value: str | None) -> str | None:
    """A field as written, unless it is CSV-quoted whole (``"a ""b"" c"`` -> ``a "b" c``).
    Mozilla writes Common Voice TSVs unquoted, but copies re-saved with pandas (as some
    published samples are) quote every sentence holding a quote; a field counts as quoted
    only when every inner quote is doubled, so a raw ``"Hi" he said`` is kept as it is."""
    match = _CSV_QUOTED.match(value) if value else None
    return match.group(1).replace('""', '"') if match else value


def _pick_column(columns: list[str], wanted: str | None, guesses: tuple[str, ...], what: str, where: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise UserError(
                f"{where} has no {what} column {wanted!r}; its columns are {', '.join(columns)} (set --{what}-column)"
            )
        return wanted
    for guess in guesses:
        if guess in columns:
            return guess
    raise UserError(
        f"{where} has no {what} column among {', '.join(guesses)}; its columns are "
        f"{', '.join(columns)} (set --{what}-column)"
    )


def read_text(path: Path, what: str) -> str:
    """The text of a UTF-8 file, its byte-order mark dropped (else the first column's name
    starts with U+FEFF and matches no column we look for). A file in another encoding is one
    UserError naming its first bad line, because a UnicodeDecodeError says neither the file nor where."""
    data = Path(path).read_bytes()
    data = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data  # keeps error offsets true
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{what} {path} is not UTF-8 (line {line} has the byte 0x{data[e.start]:02x}): re-save it as UTF-8"
        ) from None


def _text_lines(text: str) -> io.StringIO:
    """A file object over ``text`` as ``open(newline="")`` gives it, which csv needs."""
    return io.StringIO(text, newline="")


def _clean_text(value) -> str | None:
    """Missing values (None, NaN from pandas-made files) become None, not the string 'nan'."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)


class DataSource:
    """A corpus that yields :class:`Row` for named splits."""

    kind = "source"
    split_aliases: dict[str, str] = {}  # other names users give a split

    def splits(self) -> list[str] | None:
        """Split names, or None when the source is a single unsplit list."""
        raise NotImplementedError

    def _rows(self, split: str | None) -> Iterator[Row]:
        raise NotImplementedError

    def _count(self, name: str | None) -> int | None:
        """Rows of one named split when known without reading the audio."""
        return None

    def count(self, split: str | None) -> int | None:
        """Number of rows when known without reading the audio (for progress bars)."""
        total = 0
        for part in self._parts(split):
            if part is None or part.whole:
                n = self._count(part.name if part else None)
            else:
                n = None if self._count(part.name) is None else len(self._take(part))
            if n is None:
                return None
            total += n
        return total

    def describe(self) -> dict:
        """What identifies this source in a prepared cache's fingerprint."""
        raise NotImplementedError

    def _parts(self, split: str | None) -> list[SplitPart | None]:
        """The parts of ``split``, aliases resolved and names checked; ``[None]`` for an
        unsplit source, every split for ``None``."""
        available = self.splits()
        if available is None or split is None:
            return [None] if available is None else [SplitPart(name) for name in available]
        parts = [SplitPart(self.split_aliases.get(p.name, p.name), p.start, p.stop, p.text) for p in split_parts(split)]
        for part in parts:
            if part.name not in available:
                raise UserError(
                    f"split {part.name!r} is not in {self.describe()['location']}; available: "
                    f"{', '.join(available)} (combine with '+', e.g. train+dev; slice, e.g. validated[:80%])"
                )
        return parts

    def check_split(self, split: str | None) -> list[str | None]:
        """The split names ``split`` reads (slices parsed and checked too)."""
        return [part.name if part else None for part in self._parts(split)]

    def _take(self, part: SplitPart) -> list[Row]:
        return take(list(self._rows(part.name)), part, self.describe()["location"])

    def rows(self, split: str | None) -> Iterator[Row]:
        """Rows of ``split`` (``a+b`` concatenates, ``a[:80%]`` slices), in a stable order."""
        for part in self._parts(split):
            if part is None or part.whole:
                yield from self._rows(part.name if part else None)
            else:
                yield from self._take(part)


class CommonVoiceSource(DataSource):
    """A Common Voice release folder: ``<lang>/{train,dev,test,...}.tsv`` and ``clips/``."""

    kind = "common_voice"
    split_aliases = CV_SPLIT_ALIASES

    def __init__(self, folder: Path, language: str | None = None):
        folder = Path(folder)
        if not (folder / "clips").is_dir() and language and (folder / language / "clips").is_dir():
            folder = folder / language
        if not (folder / "clips").is_dir():
            raise UserError(
                f"{folder} is not a Common Voice release folder: it needs clips/ and train.tsv/dev.tsv/"
                f"test.tsv (or a <language>/ subfolder holding them)"
            )
        self.folder = folder

    def splits(self) -> list[str]:
        """The release's splits, then any other clip list beside them (the demo's ``unseen``,
        a split a user wrote in the same layout)."""
        extra = sorted(p.stem for p in self.folder.glob("*.tsv") if p.stem not in CV_SPLITS + CV_NOT_SPLITS)
        return [s for s in CV_SPLITS if (self.folder / f"{s}.tsv").is_file()] + extra

    def _read(self, split: str) -> list[dict]:
        text = read_text(self.folder / f"{split}.tsv", "Common Voice file")
        # Sentences carry quotes of every kind: read fields raw, then undo whole-field CSV quoting.
        reader = csv.DictReader(_text_lines(text), delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [{k: unquote(v) for k, v in r.items()} for r in reader]
        columns = reader.fieldnames or []
        for needed in ("path", "sentence"):
            if needed not in columns:
                raise UserError(f"{self.folder / (split + '.tsv')} has no {needed!r} column: not a Common Voice TSV")
        return rows

    def _count(self, name: str) -> int:
        return len(self._read(name))

    def _rows(self, split: str) -> Iterator[Row]:
        clips = self.folder / "clips"
        for r in self._read(split):
            path = r["path"] or ""
            yield Row(
                id=Path(path).stem or f"{split}/?",
                audio=str(clips / path),
                text=_clean_text(r.get("sentence")),
                root=str(clips),  # a TSV names clips, never files elsewhere (../, /abs, symlinks out)
                speaker=_speaker(r),
            )

    def describe(self) -> dict:
        return {"kind": self.kind, "location": str(self.folder.resolve())}


class ManifestSource(DataSource):
    """A CSV/TSV/JSONL/JSON list of ``audio path, text``; relative paths are resolved
    against the manifest's own folder so a corpus folder can move as a whole. A ``split``
    column, when present, names the splits."""

    kind = "manifest"

    def __init__(self, path: Path, audio_column: str | None = None, text_column: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"manifest {self.path} not found: give an existing .csv, .tsv or .jsonl file")
        self.records = self._load()
        columns = [c for c in self.records[0] if c is not None] if self.records else []  # None: extra CSV fields
        if not columns:
            raise UserError(f"manifest {self.path} is empty: it needs a header and one row per clip")
        self.audio_column = _pick_column(columns, audio_column, AUDIO_COLUMN_GUESSES, "audio", f"manifest {self.path}")
        self.text_column = _pick_column(columns, text_column, TEXT_COLUMN_GUESSES, "text", f"manifest {self.path}")

    def _load(self) -> list[dict]:
        suffix = self.path.suffix.lower()
        text = read_text(self.path, "manifest")
        try:
            if suffix in (".csv", ".tsv"):
                return list(csv.DictReader(_text_lines(text), delimiter="\t" if suffix == ".tsv" else ","))
            if suffix == ".jsonl":
                return self._jsonl(text)
            data = json.loads(text)
        except (json.JSONDecodeError, csv.Error) as e:
            raise UserError(f"manifest {self.path} cannot be parsed as {suffix[1:]}: {e}") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"manifest {self.path} must hold a JSON list of objects")
        return data

    def _jsonl(self, text: str) -> list[dict]:
        """One object per line; a bad line is named by its number, as an editor shows it."""
        records = []
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON may hold U+2028
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"manifest {self.path} line {number} is not JSON: {e.msg}") from None
            if not isinstance(record, dict):
                raise UserError(
                    f"manifest {self.path} line {number} is a JSON {_JSON_TYPES[type(record)]}, not an object "
                    f'like {{"audio": "clip.wav", "text": "..."}}'
                )
            records.append(record)
        return records

    def splits(self) -> list[str] | None:
        if "split" not in self.records[0]:
            return None
        return sorted({str(r.get("split")) for r in self.records})

    def _count(self, name: str | None) -> int:
        return sum(1 for r in self.records if name is None or str(r.get("split")) == name)

    def _rows(self, split: str | None) -> Iterator[Row]:
        for i, r in enumerate(self.records):
            if split is not None and str(r.get("split")) != split:
                continue
            value = _clean_text(r.get(self.audio_column))
            audio = str(self.path.parent / value) if value else None
            yield Row(
                id=Path(value).stem if value else f"row{i}",
                audio=audio,
                text=_clean_text(r.get(self.text_column)),
                speaker=_speaker(r),
            )

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "location": str(self.path.resolve()),
            "audio": self.audio_column,
            "text": self.text_column,
        }


class HFSource(DataSource):
    """A Hugging Face dataset: hub id, ``save_to_disk`` folder or a folder of data files.

    ``streaming=True`` reads rows as they arrive, for corpora that do not fit on disk.
    """

    kind = "hf"

    def __init__(
        self,
        spec: str,
        audio_column: str | None = None,
        text_column: str | None = None,
        streaming: bool = False,
        config_name: str | None = None,
    ):
        self.spec, self.streaming, self.config_name = spec, streaming, config_name
        self.local = Path(spec).exists()
        self.dataset = self._load()
        import datasets

        first = next(iter(self.dataset.values()))
        features = first.features or {}
        columns = list(first.column_names or features)
        typed = tuple(c for c in columns if isinstance(features.get(c), datasets.Audio))  # Audio-typed first
        self.audio_column = _pick_column(
            columns, audio_column, typed + AUDIO_COLUMN_GUESSES, "audio", f"dataset {spec}"
        )
        self.text_column = _pick_column(columns, text_column, TEXT_COLUMN_GUESSES, "text", f"dataset {spec}")

    def _load(self) -> dict:
        import datasets

        try:
            if self.local and (
                (Path(self.spec) / "dataset_dict.json").exists() or (Path(self.spec) / "state.json").exists()
            ):
                loaded = datasets.load_from_disk(self.spec)
                if self.streaming:
                    loaded = (
                        loaded.to_iterable_dataset()
                        if isinstance(loaded, datasets.Dataset)
                        else datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in loaded.items()})
                    )
            else:
                loaded = datasets.load_dataset(self.spec, self.config_name, streaming=self.streaming)
        except UserError:
            raise
        except Exception as e:
            where = "folder" if self.local else "hub dataset (and no such local path)"
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"could not load {where} {self.spec!r}: {first_line}") from None
        if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):
            loaded = {"train": loaded}
        return dict(loaded)

    def splits(self) -> list[str]:
        return list(self.dataset)

    def _count(self, name: str) -> int | None:
        return None if self.streaming else len(self.dataset[name])

    def _take(self, part: SplitPart) -> list[Row]:
        if self.streaming:  # a slice by speaker needs every row first, which streaming is there to avoid
            raise UserError(
                f"split {part.text!r}: a slice needs the whole split, and --streaming reads it as it arrives; "
                f"drop --streaming, or name a split without [ ]"
            )
        return super()._take(part)

    def _rows(self, split: str) -> Iterator[Row]:
        import datasets

        ds = self.dataset[split]
        feature = (ds.features or {}).get(self.audio_column)
        if isinstance(feature, datasets.Audio):
            ds = ds.cast_column(self.audio_column, datasets.Audio(decode=False))
        base = Path(self.spec) if self.local else None
        for i, r in enumerate(ds):
            audio, key = r.get(self.audio_column), f"{split}/{i}"
            if isinstance(audio, dict):
                key = Path(audio.get("path") or key).stem or key
                audio = audio.get("bytes") or audio.get("path")
            if isinstance(audio, str):
                key = Path(audio).stem
                if base is not None and not Path(audio).is_absolute():
                    audio = str(base / audio)
            yield Row(id=key, audio=audio, text=_clean_text(r.get(self.text_column)), speaker=_speaker(r))

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "location": self.spec,
            "config": self.config_name,
            "audio": self.audio_column,
            "text": self.text_column,
        }


class DemoSource(CommonVoiceSource):
    """The demo corpus (``source: demo``): the shipped Marathi sentences spoken by espeak-ng
    into a Common Voice layout in the cache, made on first use and reused after."""

    def __init__(self, language: str, progress: bool = True):
        from .demo_data import make_demo_data
        from .processor import cache_root

        super().__init__(make_demo_data(cache_root() / "demo-corpus", language, progress=progress).folder)


class PreparedSource(DataSource):
    """A folder that ``prepare`` already made: its clips are decoded and tokenized, so it is
    loaded (``prepare.load_prepared``), never read row by row."""

    kind = "prepared"
    MARKER = "prepared.json"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def splits(self) -> None:
        return None

    def _rows(self, split: str | None) -> Iterator[Row]:
        raise UserError(f"{self.folder} is prepared already: load it with load_prepared, or give the original corpus")

    def describe(self) -> dict:
        return {"kind": self.kind, "location": str(self.folder.resolve())}


def _looks_like_common_voice(folder: Path, language: str | None) -> bool:
    candidates = [folder] + ([folder / language] if language else [])
    return any((c / "clips").is_dir() and any((c / f"{s}.tsv").is_file() for s in CV_SPLITS) for c in candidates)


def open_source(
    data: DataConfig | str,
    language: str | None = None,
    audio_column: str | None = None,
    text_column: str | None = None,
    streaming: bool = False,
    config_name: str | None = None,
    progress: bool = True,
) -> DataSource:
    """The source a ``DataConfig`` names (its language, columns, streaming and dataset
    configuration applied), or the source one string names with those given as keywords.
    See the module docstring for the forms."""
    if isinstance(data, DataConfig):
        spec, language, audio_column, text_column = data.source, data.language, data.audio_column, data.text_column
        streaming, config_name = data.streaming, data.config_name
    else:
        spec = data
    if spec == "demo":
        return DemoSource(language or DataConfig.language, progress=progress)
    kind, _, rest = spec.partition(":")
    if kind == "mdc":
        from .mdc import locale_folder

        return CommonVoiceSource(locale_folder(rest, language, progress=progress), language)
    if kind in ("cv", "manifest", "hf") and rest:
        if kind == "cv":
            return CommonVoiceSource(Path(rest), language)
        if kind == "manifest":
            return ManifestSource(Path(rest), audio_column, text_column)
        return HFSource(rest, audio_column, text_column, streaming, config_name)
    path = Path(spec)
    if (path / PreparedSource.MARKER).is_file():
        return PreparedSource(path)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return ManifestSource(path, audio_column, text_column)
    if path.is_dir():
        if _looks_like_common_voice(path, language):
            return CommonVoiceSource(path, language)
        return HFSource(spec, audio_column, text_column, streaming, config_name)
    if path.exists():
        raise UserError(f"data source {spec!r} is a file but not a manifest: use .csv, .tsv, .jsonl or .json")
    if len(path.parts) == 2 and not spec.startswith((".", "/")):
        return HFSource(spec, audio_column, text_column, streaming, config_name)
    raise UserError(
        f"data source {spec!r} not found: give a Common Voice folder, a manifest (.csv/.tsv/.jsonl), "
        f"a dataset folder, a prepared folder, 'demo', mdc:DATASET_ID, or a hub id like owner/name"
    )
