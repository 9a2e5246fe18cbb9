"""``--data mdc:ID``: a Common Voice release from the Mozilla Data Collective, tested offline.

The archive is built here in the release's layout (``cv-corpus-X/<locale>/...``) with real
MP3 clips. Two seams stand in for the network: ``mdc.download_archive`` (the archive handling
needs no ``datacollective``), and ``requests.request`` under the real ``datacollective``
package, so its own exceptions for 401/403/404 and a dropped connection reach our lines.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from conftest import write_tone

from whisper_tune import mdc
from whisper_tune.config import DataConfig
from whisper_tune.errors import UserError
from whisper_tune.sources import CommonVoiceSource, open_source

RELEASE = "cv-corpus-23.0-2025-09-05"
SENTENCES = {"mr": ["नमस्कार", "धन्यवाद", "पुन्हा भेटू"], "hi": ["नमस्ते", "शुक्रिया"]}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test starts with an empty cache and no key or API address from the outside."""
    monkeypatch.setenv("WHISPER_TUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MDC_API_KEY", raising=False)
    monkeypatch.delenv("MDC_API_URL", raising=False)


def _locale(root: Path, locale: str) -> None:
    """``root/<locale>/`` as a release has it: clips/*.mp3 and the TSVs (train = all, dev = last)."""
    folder = root / locale
    (folder / "clips").mkdir(parents=True)
    rows = []
    for i, sentence in enumerate(SENTENCES[locale]):
        name = f"common_voice_{locale}_{i}.mp3"
        write_tone(folder / "clips" / name, seconds=0.4, freq=300 + 100 * i)
        rows.append({"client_id": "c", "path": name, "sentence": sentence, "up_votes": "2", "down_votes": "0"})
    for split, chosen in (("validated", rows), ("train", rows), ("dev", rows[-1:]), ("test", [])):
        with open(folder / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", quoting=csv.QUOTE_NONE)
            writer.writeheader()
            writer.writerows(chosen)


def _archive(tmp_path: Path, locales=("mr",), extra=()) -> Path:
    """A release .tar.gz holding ``RELEASE/<locale>/`` for each locale, then ``extra`` members
    (TarInfo, bytes) appended as they are, for archives no honest tool would write."""
    src = tmp_path / "src"
    for locale in locales:
        _locale(src / RELEASE, locale)
    path = tmp_path / f"{RELEASE}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        if locales:
            tar.add(src / RELEASE, arcname=RELEASE)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, data: bytes = b"x", link: str | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
        return info, None
    info.size = len(data)
    return info, data


@pytest.fixture()
def downloads(monkeypatch):
    """Replace the download with a copy of the archive put in ``archive[0]``; records each call."""
    calls: list[str] = []
    archive: list[Path] = []

    def fake(dataset_id, folder, progress=True):
        calls.append(dataset_id)
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(archive[0], folder / archive[0].name))

    monkeypatch.setattr(mdc, "download_archive", fake)
    return calls, archive


def _cache(tmp_path, dataset_id) -> Path:
    return tmp_path / "cache" / "mdc" / dataset_id


def test_first_call_unpacks_and_reads_it_as_common_voice(tmp_path, downloads):
    calls, archive = downloads
    archive.append(_archive(tmp_path))
    source = open_source(DataConfig(source="mdc:cv-mr", language="mr"), progress=False)
    assert isinstance(source, CommonVoiceSource)
    assert source.folder == _cache(tmp_path, "cv-mr") / "release" / RELEASE / "mr"
    assert source.splits() == ["train", "dev", "test", "validated"]
    rows = list(source.rows("train"))
    assert [r.text for r in rows] == SENTENCES["mr"]
    assert [r.id for r in rows] == [f"common_voice_mr_{i}" for i in range(3)]
    original = tmp_path / "src" / RELEASE / "mr" / "clips"
    assert all(Path(r.audio).read_bytes() == (original / Path(r.audio).name).read_bytes() for r in rows)
    assert [r.text for r in source.rows("dev")] == SENTENCES["mr"][-1:] and source.count("test") == 0
    assert calls == ["cv-mr"]
    assert sorted(p.name for p in _cache(tmp_path, "cv-mr").iterdir()) == ["release"]  # archive and partial gone


def test_second_call_reuses_the_folder_without_downloading(tmp_path, downloads):
    calls, archive = downloads
    archive.append(_archive(tmp_path))
    first = open_source("mdc:cv-mr", language="mr", progress=False).folder
    archive[0] = tmp_path / "gone.tar.gz"  # a second download would fail on this
    second = open_source("mdc:cv-mr", language="mr", progress=False).folder
    assert first == second and calls == ["cv-mr"]
    assert len(list(open_source("mdc:cv-mr", progress=False).rows("validated"))) == 3


def test_an_interrupted_unpack_is_redone_not_read(tmp_path, downloads):
    calls, archive = downloads
    archive.append(_archive(tmp_path))
    leftover = _cache(tmp_path, "cv-mr") / "release.partial" / RELEASE / "mr"
    leftover.mkdir(parents=True)
    (leftover / "half.tsv").write_text("path\tsentence\n")
    source = open_source("mdc:cv-mr", language="mr", progress=False)
    assert calls == ["cv-mr"] and len(list(source.rows("train"))) == 3
    assert not (_cache(tmp_path, "cv-mr") / "release.partial").exists()
    assert not (source.folder / "half.tsv").exists()


@pytest.mark.parametrize(
    "member",
    [_member("../evil.txt"), _member(f"{RELEASE}/mr/../../../evil.txt"), _member("/tmp/evil.txt")]
    + [_member(f"{RELEASE}/mr/clips/link.mp3", link="../../../../evil.txt"), _member("a/link", link="/etc/passwd")],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-absolute"],
)
def test_a_member_leading_outside_is_refused_and_nothing_is_kept(tmp_path, downloads, member):
    calls, archive = downloads
    archive.append(_archive(tmp_path, extra=[member]))
    with pytest.raises(UserError, match="leads outside its folder") as e:
        open_source("mdc:bad", language="mr", progress=False)
    assert repr(member[0].name) in str(e.value) and "\n" not in str(e.value)
    root = _cache(tmp_path, "bad")
    assert not (root / "release").exists() and not (root / "release.partial").exists()
    assert not list(tmp_path.rglob("evil.txt"))


def test_several_locales_are_picked_by_language(tmp_path, downloads):
    calls, archive = downloads
    archive.append(_archive(tmp_path, locales=("hi", "mr")))
    assert open_source("mdc:cv", language="hi", progress=False).folder.name == "hi"
    assert open_source("mdc:cv", language="Marathi", progress=False).folder.name == "mr"
    with pytest.raises(UserError, match=r"several Common Voice locales \(hi, mr\).*'ta'.*--language") as e:
        open_source("mdc:cv", language="ta", progress=False)
    assert "\n" not in str(e.value) and calls == ["cv"]


def test_a_locale_with_a_region_is_picked_by_its_language_code(tmp_path):
    release = tmp_path / "release"
    for name in ("sv-SE", "mr"):
        (release / RELEASE / name / "clips").mkdir(parents=True)
        (release / RELEASE / name / "validated.tsv").write_text("path\tsentence\n")
    assert mdc.pick_locale(release, "sv", "x").name == "sv-SE"
    assert mdc.pick_locale(release, "swedish", "x").name == "sv-SE"


def test_an_archive_without_a_locale_folder_says_so(tmp_path, downloads):
    calls, archive = downloads
    archive.append(_archive(tmp_path, locales=(), extra=[_member("README.md", b"not speech")]))
    with pytest.raises(UserError, match="holds no Common Voice locale folder") as e:
        open_source("mdc:readme", progress=False)
    assert "\n" not in str(e.value)


def test_a_file_that_is_not_an_archive_says_so(tmp_path, downloads):
    calls, archive = downloads
    archive.append(tmp_path / "cv.tar.gz")
    archive[0].write_bytes(b"<html>not a tarball</html>")
    with pytest.raises(UserError, match="not a readable .tar.gz release"):
        open_source("mdc:html", progress=False)
    assert not (_cache(tmp_path, "html") / "release").exists()


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-rf"])
def test_an_id_that_is_not_one_is_refused_before_any_download(bad, downloads):
    with pytest.raises(UserError, match="is not a dataset id"):
        open_source(f"mdc:{bad}", progress=False)
    assert downloads[0] == []


def test_without_the_package_the_line_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datacollective", None)  # import raises ImportError
    with pytest.raises(UserError, match=r"pip install 'whisper-tune\[mdc\]'"):
        open_source("mdc:cv-mr", progress=False)


# ---- through the real datacollective package, its HTTP faked -------------------------------

API = "https://mozilladatacollective.com/api/datasets"
PAGE = "https://mozilladatacollective.com/datasets/cv-mr"


def _response(status: int, body: bytes = b"", payload: dict | None = None):
    import requests

    r = requests.Response()
    r.status_code = status
    r._content = json.dumps(payload).encode() if payload is not None else body
    r._content_consumed = True  # iter_content then yields _content, as a stream would
    return r


@pytest.fixture()
def api(monkeypatch, tmp_path):
    """``routes[(method, url)]`` -> a response or an exception; every request is recorded."""
    pytest.importorskip("datacollective")
    import requests

    routes, seen = {}, []

    def request(method, url, headers=None, **kw):
        seen.append((method, url, dict(headers or {})))
        answer = routes.get((method, url), _response(500))
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(requests, "request", request)
    return routes, seen


def _published(routes, archive: Path):
    """The routes of a dataset ``cv-mr`` whose download serves ``archive``."""
    details = {"id": "cm-cv-mr", "filename": archive.name, "datasetUrl": PAGE, "checksum": "c1"}
    for name in ("cv-mr", "cm-cv-mr"):  # the slug users give and the id the package asks again with
        routes[("GET", f"{API}/{name}")] = _response(200, payload=details)
    plan = {"downloadUrl": "https://files.invalid/cv.tar.gz", "sizeBytes": archive.stat().st_size, "checksum": "c1"}
    routes[("POST", f"{API}/cm-cv-mr/download")] = _response(200, payload=plan)
    routes[("GET", plan["downloadUrl"])] = _response(200, body=archive.read_bytes())


def test_the_real_package_downloads_and_it_is_read(tmp_path, api, monkeypatch):
    routes, seen = api
    _published(routes, _archive(tmp_path))
    monkeypatch.setenv("MDC_API_KEY", "k-123")
    source = open_source("mdc:cv-mr", language="mr", progress=False)
    assert [r.text for r in source.rows("train")] == SENTENCES["mr"]
    post = [h for m, u, h in seen if m == "POST"]
    assert post and post[0]["Authorization"] == "Bearer k-123"
    assert sorted(p.name for p in _cache(tmp_path, "cv-mr").iterdir()) == ["release"]
    count = len(seen)
    open_source("mdc:cv-mr", language="mr", progress=False)
    assert len(seen) == count  # the second call makes no request at all


def test_no_key_says_where_to_get_one_and_asks_nothing(api):
    routes, seen = api
    with pytest.raises(UserError) as e:
        open_source("mdc:cv-mr", progress=False)
    line = str(e.value)
    assert "export MDC_API_KEY=" in line and mdc.KEYS_URL in line and "\n" not in line
    assert seen == []


@pytest.mark.parametrize(
    "failure, expected",
    [
        ("terms", f"accept the dataset's terms on {PAGE}"),
        ("unknown", "no dataset mdc:cv-mr on the Mozilla Data Collective"),
        ("bad-key", "refused MDC_API_KEY"),
        ("network", "could not download mdc:cv-mr (ConnectionError: no answer from https://mozilladatacollective.com)"),
        ("rate", "rate-limiting"),
    ],
)
def test_each_refusal_of_the_platform_is_one_line(tmp_path, api, monkeypatch, failure, expected):
    import requests

    routes, seen = api
    _published(routes, _archive(tmp_path))
    post = ("POST", f"{API}/cm-cv-mr/download")
    if failure == "terms":
        routes[post] = _response(403, payload={"message": "You must agree to the dataset's terms"})
    elif failure == "unknown":
        routes[("GET", f"{API}/cv-mr")] = _response(404, payload={"message": "Dataset not found"})
    elif failure == "bad-key":
        routes[post] = _response(401)
    elif failure == "network":
        routes[post] = requests.ConnectionError("Connection refused")
    else:
        routes[post] = _response(429)
    monkeypatch.setenv("MDC_API_KEY", "k-123")
    with pytest.raises(UserError) as e:
        open_source("mdc:cv-mr", progress=False)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (_cache(tmp_path, "cv-mr") / "release").exists()
