"""Every kind of bad row in one Common Voice folder and a few manifests: prepare gives each
its exact reason, keeps the good ones, and never ends in a traceback (the CLI is called
in-process, so any exception but UserError fails the test with its traceback)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import write_tone

from whisper_tune.cli import main
from whisper_tune.demo_data import CV_COLUMNS

LONG_TEXT = " ".join(["महाराष्ट्र"] * 120)  # about 700 tokens > 448


def _wav(path, samples, sr=16000, **kw):
    sf.write(str(path), np.asarray(samples, np.float32), sr, **kw)
    return path


def _tsv(path, rows, encoding="utf-8"):
    """A Common Voice TSV: every column of a release, ``path`` and ``sentence`` filled."""
    lines = ["\t".join(CV_COLUMNS)]
    for clip, sentence in rows:
        fields = dict.fromkeys(CV_COLUMNS, "") | {"client_id": "fuzz", "path": clip, "sentence": sentence}
        lines.append("\t".join(fields[c] for c in CV_COLUMNS))
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def _corpus(root):
    """The fuzz folder; returns (rows of train.tsv, expected rejections id -> reason, prepared ids)."""
    cv = root / "cv"
    clips = cv / "clips"
    clips.mkdir(parents=True)
    good = write_tone(clips / "good.mp3", seconds=3.0, sr=48000)
    for name in ("good2", "emptytext", "punct", "zerowidth", "longtext"):
        shutil.copy(good, clips / f"{name}.mp3")
    (clips / "corrupt.mp3").write_bytes(np.random.default_rng(0).bytes(4000))
    (clips / "truncated.mp3").write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.3)])
    (clips / "zerobytes.mp3").write_bytes(b"")
    _wav(clips / "header.wav", [])
    _wav(clips / "nan.wav", np.full(16000, np.nan), subtype="FLOAT")
    _wav(clips / "inf.wav", np.r_[np.zeros(8000), np.inf, np.zeros(8000)], subtype="FLOAT")
    write_tone(clips / "long45.wav", seconds=45.0)
    _wav(clips / "silence.wav", np.zeros(16000))
    (clips / "folder.mp3").mkdir()
    write_tone(cv / "traversal.wav", seconds=1.0)
    absolute = write_tone(root / "absolute.wav", seconds=1.0)
    (clips / "symlink.wav").symlink_to(write_tone(root / "target.wav", seconds=1.0))
    rows = [
        ("good.mp3", "पहिले वाक्य"),
        ("good2.mp3", "दुसरे वाक्य"),
        ("corrupt.mp3", "खराब"),
        ("truncated.mp3", "अर्धवट"),
        ("zerobytes.mp3", "रिकामी फाइल"),
        ("header.wav", "फक्त शीर्षक"),
        ("nan.wav", "संख्या नाही"),
        ("inf.wav", "अनंत"),
        ("long45.wav", "खूप लांब"),
        ("silence.wav", "शांत"),
        ("folder.mp3", "फोल्डर"),
        ("../traversal.wav", "बाहेर"),
        (str(absolute), "पूर्ण मार्ग"),
        ("symlink.wav", "दुवा"),
        ("gone.mp3", "हरवले"),
        ("emptytext.mp3", "   "),
        ("punct.mp3", "।।  ..."),
        ("zerowidth.mp3", "\u200b\u200c \u200d\ufeff"),
        ("longtext.mp3", LONG_TEXT),
        ("good.mp3", " पहिले  वाक्य "),  # the first row again, spaced differently
    ]
    _tsv(cv / "train.tsv", rows)
    _tsv(cv / "dev.tsv", [("good.mp3", "ok"), ("good2.mp3", "café")], encoding="latin-1")
    expected = {
        "corrupt": "undecodable",
        "truncated": "undecodable",
        "zerobytes": "empty",
        "header": "empty",
        "nan": "not_finite",
        "inf": "not_finite",
        "long45": "too_long",
        "silence": "silent",
        "folder": "not_a_file",
        "traversal": "outside_clips",
        "absolute": "outside_clips",
        "symlink": "outside_clips",
        "gone": "missing",
        "emptytext": "empty_text",
        "punct": "no_words",
        "zerowidth": "no_words",
        "longtext": "labels_too_long",
        "good": "duplicate",  # the second row of good.mp3; the first one is prepared
    }
    return cv, expected, ["good", "good2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("fuzz"))


def _prepare(capsys, data, out, split=None) -> tuple[int, str]:
    argv = ["prepare", "--data", str(data), "--out", str(out), "--language", "mr", "--num-proc", "1"]
    code = main(argv + (["--split", split] if split else []))
    return code, capsys.readouterr().err


def _verdicts(out):
    from whisper_tune.prepare import load_prepared

    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r["reason"] for r in rejected}, load_prepared(out)["id"], rejected


def test_every_bad_row_has_its_reason(corpus, tmp_path, capsys):
    cv, expected, good = corpus
    code, err = _prepare(capsys, cv, tmp_path / "out", "train")
    assert code == 0 and "Traceback" not in err
    reasons, prepared, rejected = _verdicts(tmp_path / "out")
    assert reasons == expected
    assert prepared == good
    assert len(rejected) == len(expected) and all(r["detail"] for r in rejected)
    details = {r["id"]: r["detail"] for r in rejected}
    assert details["truncated"].startswith("truncated: decodes to")
    assert details["header"] == "decodes to 0 samples: the file holds a header and no audio"
    assert details["zerobytes"].endswith("is an empty file (0 bytes)")


def test_invalid_utf8_tsv_is_one_error_with_its_line(corpus, tmp_path, capsys):
    cv, _, _ = corpus
    code, err = _prepare(capsys, cv, tmp_path / "out", "dev")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"whisper-tune: error: Common Voice file {cv / 'dev.tsv'} is not UTF-8 (line 3 has the byte 0xe9): "
        "re-save it as UTF-8"
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifests_with_bom_and_crlf(corpus, tmp_path, capsys, suffix):
    cv, _, _ = corpus
    clips = cv / "clips"
    rows = [(clips / "good.mp3", "पहिले वाक्य"), (clips / "nan.wav", "संख्या नाही"), (clips / "good2.mp3", "।")]
    if suffix == ".csv":
        body = "audio,text\r\n" + "".join(f"{a},{t}\r\n" for a, t in rows)
    else:
        body = "".join(json.dumps({"audio": str(a), "text": t}, ensure_ascii=False) + "\r\n" for a, t in rows)
    manifest = tmp_path / f"m{suffix}"
    manifest.write_bytes(("\ufeff" + body).encode("utf-8"))
    code, err = _prepare(capsys, manifest, tmp_path / "out")
    assert code == 0 and "Traceback" not in err
    reasons, prepared, _ = _verdicts(tmp_path / "out")
    assert reasons == {"nan": "not_finite", "good2": "no_words"} and prepared == ["good"]
