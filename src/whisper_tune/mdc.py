"""Mozilla Data Collective releases (``--data mdc:DATASET_ID``) as Common Voice folders.

Common Voice is now published on the Mozilla Data Collective (MDC). A release is one
``.tar.gz`` laid out as ``cv-corpus-X/<locale>/{validated,train,dev,test}.tsv`` and
``clips/*.mp3``; once unpacked it is an ordinary Common Voice folder, so this module only
gets it onto disk and hands the locale folder to ``sources.CommonVoiceSource``.

Choices worth knowing:

* The download goes through the ``datacollective`` package (the ``mdc`` extra), imported
  only here and only when a release is not on disk yet: the key (``MDC_API_KEY``, which
  the package also reads from a ``.env`` file), resumable downloads and the API's error
  statuses are its business. Its errors become one ``UserError`` line each.
* Releases live in the whisper-tune cache, ``<cache>/mdc/<id>/release/``. The archive is
  unpacked into ``release.partial/`` and renamed when complete, so a folder named
  ``release`` is always whole; an interrupted unpack is redone, never half-read. Once it
  exists no network is touched, and the archive (tens of GB for large locales) is deleted.
* We unpack ourselves rather than with the package's ``extract=True``, to refuse members
  with absolute paths, ``..`` or links leading out with a line that names the member
  (the ``data`` filter of ``tarfile`` is applied as well).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from .errors import UserError

log = logging.getLogger(__name__)

KEY_ENV = "MDC_API_KEY"  # what datacollective reads the key from (datacollective.api_utils.ENV_API_KEY)
SITE = "https://mozilladatacollective.com"
KEYS_URL = f"{SITE}/api-reference"  # where the package's own messages send users for a key
INSTALL_HINT = "pip install 'whisper-tune[mdc]'"
LOCALE_FILES = ("validated.tsv", "train.tsv")  # a locale folder has clips/ and one of these
LOCALE_DEPTH = 3  # cv-corpus-X/<locale>/ is 2 levels down; 1 more for a wrapping folder
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # MDC ids and slugs; nothing that walks out of the cache


def release_root(dataset_id: str) -> Path:
    """The cache folder of one MDC dataset (``release/`` and, while downloading, ``download/``)."""
    from .processor import cache_root

    if not _ID.fullmatch(dataset_id or ""):
        raise UserError(
            f"mdc:{dataset_id} is not a dataset id: give the ID or slug shown on the dataset's page "
            f"on {SITE} (Download > API / Python Access), e.g. --data mdc:common-voice-scripted-speech-mr"
        )
    return cache_root() / "mdc" / dataset_id


def locale_folder(dataset_id: str, language: str | None, progress: bool = True) -> Path:
    """The Common Voice locale folder of release ``dataset_id``: downloaded and unpacked into
    the cache on first use, read from there without the network after that."""
    root = release_root(dataset_id)
    release = root / "release"
    if not release.is_dir():
        download = root / "download"
        archive = download_archive(dataset_id, download, progress)
        unpack(archive, release)
        shutil.rmtree(download, ignore_errors=True)  # the unpacked folder is what we keep
    return pick_locale(release, language, dataset_id)


def _client():
    try:
        import datacollective
    except ImportError:
        raise UserError(f"--data mdc:... needs the datacollective package: {INSTALL_HINT}") from None
    return datacollective


def download_archive(dataset_id: str, folder: Path, progress: bool = True) -> Path:
    """Download the release archive into ``folder`` through ``datacollective`` (which resumes
    an interrupted download there) and return its path."""
    client = _client()  # importing it loads a .env file, so the key is looked up only after
    if not os.environ.get(KEY_ENV, "").strip():
        raise UserError(_missing_key(dataset_id))
    page = None
    try:
        details = client.get_dataset_details(dataset_id)  # public: tells an unknown id before the key is used
        page = details.datasetUrl
        return Path(client.download_dataset(details.id, download_directory=str(folder), show_progress=progress))
    except Exception as e:
        message = explain_error(e, dataset_id, page, folder)
        if message is None:
            raise
        raise UserError(message) from None


def _missing_key(dataset_id: str) -> str:
    return (
        f"mdc:{dataset_id} needs a Mozilla Data Collective API key: create one at {KEYS_URL} "
        f"and run 'export {KEY_ENV}=<your key>' (or put {KEY_ENV}=<your key> in a .env file)"
    )


def explain_error(error: Exception, dataset_id: str, page: str | None, folder: Path) -> str | None:
    """One line for an error of ``datacollective`` (or of the network under it), or None for
    one that is a bug. The package raises builtin types for HTTP statuses (403 is a
    PermissionError, 404 a FileNotFoundError); errors of the local disk carry an errno, the
    package's do not, which is how the two are told apart."""
    import requests
    from datacollective.errors import AuthenticationError, DownloadError, RateLimitError, ResourceRemovedError

    where = f"mdc:{dataset_id}"
    first = (str(error).strip().splitlines() or [type(error).__name__])[0].strip()
    if isinstance(error, OSError) and error.errno is not None:
        return f"cannot write {where} into {folder}: {error.strerror}; set WHISPER_TUNE_CACHE to a writable folder"
    if isinstance(error, AuthenticationError):
        return (
            f"the Mozilla Data Collective refused {KEY_ENV} (invalid, expired or revoked): "
            f"create a new key at {KEYS_URL} and export {KEY_ENV} again"
        )
    if isinstance(error, ValueError) and KEY_ENV in str(error):
        return _missing_key(dataset_id)
    if isinstance(error, PermissionError):
        return (
            f"access to {where} was denied: accept the dataset's terms on {page or SITE + ' (the dataset page)'} "
            f"while signed in to the account of your {KEY_ENV}, then run again"
        )
    if isinstance(error, ResourceRemovedError):
        return f"{where} was removed from the Mozilla Data Collective: pick a current release on {SITE}"
    if isinstance(error, FileNotFoundError):
        return (
            f"no dataset {where} on the Mozilla Data Collective: copy the ID or slug "
            f"from the dataset's page on {SITE} (Download > API / Python Access)"
        )
    if isinstance(error, RateLimitError):
        return f"the Mozilla Data Collective is rate-limiting downloads of {where}: wait a few minutes, then run again"
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):  # their text is a page of urllib3
        first = f"{type(error).__name__}: no answer from {SITE}"
    if isinstance(error, (requests.RequestException, DownloadError)):
        return (
            f"could not download {where} ({first[:160]}): check the network and run again; "
            f"the download resumes where it stopped"
        )
    return None


def _unsafe(member: tarfile.TarInfo) -> bool:
    """A member that would land outside the folder: an absolute path, ``..``, or a link to one."""
    names = [member.name] + ([member.linkname] if member.issym() or member.islnk() else [])
    return any(PurePosixPath(n).is_absolute() or ".." in PurePosixPath(n).parts for n in names)


def unpack(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` atomically: into ``dest.partial`` first, renamed once
    complete; a leftover ``.partial`` from an interrupted run is removed first."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # one pass: releases are too large to read twice
                if _unsafe(member):
                    raise UserError(
                        f"{archive.name} holds the member {member.name!r} that leads outside its folder "
                        f"(absolute path, '..' or such a link): refusing to unpack it; it is not a Common Voice release"
                    )
                tar.extract(member, partial, **extra)
        partial.rename(dest)
    except tarfile.TarError as e:
        raise UserError(f"{archive} is not a readable .tar.gz release ({e}): delete it and run again") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _locales(release: Path) -> list[Path]:
    """Folders up to ``LOCALE_DEPTH`` below ``release`` holding ``clips/`` and a locale TSV
    (never walking into ``clips/``, which holds up to millions of files)."""
    found = []
    for folder, subfolders, files in os.walk(release):
        if "clips" in subfolders and any(f in files for f in LOCALE_FILES):
            found.append(Path(folder))
        depth = len(Path(folder).relative_to(release).parts)
        subfolders[:] = [] if depth >= LOCALE_DEPTH else sorted(s for s in subfolders if s != "clips")
    return sorted(found)


def pick_locale(release: Path, language: str | None, dataset_id: str) -> Path:
    """The one locale folder of the release, or the one ``language`` names among several
    (``mr`` or ``Marathi`` for ``mr``; ``sv`` for ``sv-SE``)."""
    locales = _locales(release)
    if not locales:
        raise UserError(
            f"mdc:{dataset_id} holds no Common Voice locale folder (clips/ with validated.tsv or train.tsv): "
            f"it is not a Common Voice release; delete {release.parent} once you have checked the id"
        )
    if len(locales) == 1:
        return locales[0]
    wanted = {(language or "").lower(), _language_code(language)}
    chosen = [p for p in locales if p.name.lower() in wanted] or [
        p for p in locales if p.name.split("-")[0].lower() in wanted
    ]
    if len(chosen) == 1:
        return chosen[0]
    names = ", ".join(p.name for p in locales)
    raise UserError(
        f"mdc:{dataset_id} holds several Common Voice locales ({names}) and data.language {language!r} "
        f"picks {'none' if not chosen else 'more than one'}: set --language (data.language) to one of {names}"
    )


def _language_code(language: str | None) -> str:
    """Whisper's code for ``language`` (a code or English name), or it lowercased if Whisper has none."""
    from .processor import resolve_language

    try:
        return resolve_language(language) if language else ""
    except UserError:
        return (language or "").lower()
