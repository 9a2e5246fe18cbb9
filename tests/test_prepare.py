import json
import os
import shutil

import numpy as np
import pytest
from conftest import write_tone

from whisper_tune.audio import load_audio
from whisper_tune.errors import UserError
from whisper_tune.prepare import PrepareOptions, has_words, load_prepared, prepare
from whisper_tune.sources import open_source


def _add_row(folder, split, clip, sentence):
    with open(folder / f"{split}.tsv", "a", encoding="utf-8") as f:
        f.write("\t".join(["planted", clip, "x", sentence, "", "2", "0", "", "", "", "", "mr", ""]) + "\n")


def _plant_bad_clips(folder):
    """One row per rejection reason, each with a distinct clip id."""
    clips = folder / "clips"
    good = sorted(clips.glob("*.mp3"))[0]
    (clips / "corrupt.mp3").write_bytes(good.read_bytes()[:40] + b"\x00garbage" * 50)
    write_tone(clips / "long40s.mp3", seconds=40.0, sr=48000)
    import soundfile as sf

    sf.write(str(clips / "silent.mp3"), np.zeros(48000, np.float32), 48000, format="MP3")
    sf.write(str(clips / "empty.wav"), np.zeros(0, np.float32), 16000)
    shutil.copy(good, clips / "notext.mp3")
    shutil.copy(good, clips / "wordy.mp3")
    _add_row(folder, "train", "corrupt.mp3", "खराब फाइल")
    _add_row(folder, "train", "long40s.mp3", "खूप लांब")
    _add_row(folder, "train", "silent.mp3", "शांत")
    _add_row(folder, "train", "empty.wav", "रिकामे")
    _add_row(folder, "train", "notext.mp3", "   ")
    _add_row(folder, "train", "gone.mp3", "हरवलेली फाइल")
    _add_row(folder, "train", "wordy.mp3", " ".join(["महाराष्ट्र"] * 120))
    return {
        "corrupt": "undecodable",
        "long40s": "too_long",
        "silent": "silent",
        "empty": "empty",
        "notext": "empty_text",
        "gone": "missing",
        "wordy": "labels_too_long",
    }


def test_bad_clips_are_listed_and_the_rest_prepared(corpus_copy, tmp_path):
    planted = _plant_bad_clips(corpus_copy)
    source = open_source(str(corpus_copy))
    n_rows = source.count("train")
    result = prepare(
        source, "train", tmp_path / "out", PrepareOptions(language="mr"), num_proc=2, shard_size=5, progress=False
    )
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rejected} == planted
    assert all(r["audio"] and r["detail"] for r in rejected)
    assert result.prepared == n_rows - len(planted)
    assert result.rejected == {reason: 1 for reason in sorted(planted.values())}

    ds = load_prepared(tmp_path / "out")
    assert len(ds) == result.prepared
    ex = ds[0]
    original = next(r for r in source.rows("train") if r.id == ex["id"])
    assert ex["text"] == original.text
    assert np.allclose(np.asarray(ex["audio"], np.float32), load_audio(original.audio))
    assert ex["labels"][:4] == [50258, 50320, 50359, 50363] and ex["labels"][-1] == 50257
    assert abs(ex["duration"] - len(ex["audio"]) / 16000) < 1e-3


def test_rerun_reuses_and_resumes(small_corpus, tmp_path):
    source = open_source(str(small_corpus))
    out = tmp_path / "out"
    first = prepare(source, "train", out, num_proc=1, shard_size=4, progress=False)
    assert first.processed_now == source.count("train") and not first.reused
    again = prepare(source, "train", out, num_proc=1, shard_size=4, progress=False)
    assert again.reused and again.prepared == first.prepared

    # Simulate a run killed after two shards: later shards gone, folder not complete.
    meta = json.loads((out / "prepared.json").read_text())
    (out / "prepared.json").write_text(json.dumps(meta | {"complete": False}))
    shards = sorted((out / "shards").glob("shard-*.arrow"))
    for arrow in shards[2:]:
        arrow.unlink()
    resumed = prepare(source, "train", out, num_proc=1, shard_size=4, progress=False)
    assert resumed.processed_now == source.count("train") - 8
    assert resumed.prepared == first.prepared
    assert load_prepared(out)["id"] == [r.id for r in source.rows("train")]


def test_parallel_equals_serial(small_corpus, tmp_path):
    source = open_source(str(small_corpus))
    a = load_prepared(prepare(source, "train", tmp_path / "a", num_proc=1, progress=False).out)
    b = load_prepared(prepare(source, "train", tmp_path / "b", num_proc=2, shard_size=3, progress=False).out)
    assert a["id"] == b["id"] and a["labels"] == b["labels"]


def test_folder_of_another_preparation_is_refused(small_corpus, tmp_path):
    source = open_source(str(small_corpus))
    prepare(source, "test", tmp_path / "out", num_proc=1, progress=False)
    with pytest.raises(UserError, match="holds a different preparation"):
        prepare(source, "dev", tmp_path / "out", num_proc=1, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(UserError, match="is not a prepared folder"):
        prepare(source, "dev", tmp_path / "busy", num_proc=1, progress=False)
    with pytest.raises(UserError, match="not a finished prepared folder"):
        load_prepared(tmp_path / "busy")


def test_manifest_with_missing_text_and_bytes_audio(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=1.0)
    write_tone(tmp_path / "b.wav", seconds=1.0)
    rows = [{"audio": "a.wav", "text": "ठीक"}, {"audio": "b.wav", "text": None}, {"audio": None, "text": "x"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = prepare(open_source(str(tmp_path / "m.jsonl")), None, tmp_path / "out", num_proc=1, progress=False)
    assert result.prepared == 1 and result.rejected == {"missing": 1, "missing_text": 1}


def test_options_validate_early():
    with pytest.raises(UserError, match="unknown language"):
        PrepareOptions(language="xx-not-a-language")
    with pytest.raises(UserError, match="unknown task"):
        PrepareOptions(task="summarize")
    assert PrepareOptions(language="Marathi").language == "mr"


# ---- bad input: each row its own reason, the folder its own error -----------------------


def _manifest(tmp_path, rows, name="m.jsonl"):
    """A JSONL manifest of (audio, text) rows; audio names are tones made in tmp_path/wav."""
    (tmp_path / "wav").mkdir(exist_ok=True)
    for audio, _ in rows:
        if audio and not (tmp_path / audio).exists() and audio.startswith("wav/"):
            write_tone(tmp_path / audio, seconds=0.5)
    (tmp_path / name).write_text("".join(json.dumps({"audio": a, "text": t}) + "\n" for a, t in rows))
    return open_source(str(tmp_path / name))


def _reasons(out):
    return {r["id"]: r["reason"] for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}


@pytest.mark.parametrize(
    ("text", "words"),
    [("।। ...", False), ("\u200b\u200c\u200d\ufeff", False), ("— ? ¡ ★ 🙂", False), ("क्ष", True), ("2024", True)],
)
def test_has_words(text, words):
    assert has_words(text) is words


def test_text_without_words_is_rejected(tmp_path):
    rows = [("wav/a.wav", "ठीक आहे"), ("wav/b.wav", "।।  ..."), ("wav/c.wav", "\u200b \u200c\u200d \ufeff")]
    out = tmp_path / "out"
    result = prepare(_manifest(tmp_path, rows), None, out, num_proc=1, progress=False)
    assert result.prepared == 1 and _reasons(out) == {"b": "no_words", "c": "no_words"}


def test_transcripts_with_control_characters_are_listed_not_stored(tmp_path):
    """NUL bytes and terminal escape codes (issue 29 item 8) are refused with their reason."""
    rows = [("wav/a.wav", "ठीक आहे"), ("wav/b.wav", "ठीक\x00आहे"), ("wav/c.wav", "\x1b[31mलाल\x1b[0m")]
    out = tmp_path / "out"
    result = prepare(_manifest(tmp_path, rows), None, out, num_proc=1, progress=False)
    assert result.prepared == 1 and _reasons(out) == {"b": "control_chars", "c": "control_chars"}
    assert "\\x1b" in (out / "rejected.jsonl").read_text()  # shown escaped, never as a live code
    assert "\x1b" not in (out / "rejected.jsonl").read_text() and load_prepared(out)["text"] == ["ठीक आहे"]


def test_common_voice_paths_stay_in_clips_but_manifests_may_name_any_file(tmp_path):
    folder = tmp_path / "cv"
    (folder / "clips").mkdir(parents=True)
    write_tone(folder / "clips" / "in.wav", seconds=0.5)
    outside = write_tone(tmp_path / "outside.wav", seconds=0.5)
    (folder / "clips" / "link.wav").symlink_to(outside)
    (folder / "clips" / "inlink.wav").symlink_to(folder / "clips" / "in.wav")
    paths = ["in.wav", "../../outside.wav", str(outside), "link.wav", "inlink.wav", "./in.wav"]
    (folder / "train.tsv").write_text(
        "client_id\tpath\tsentence\n" + "".join(f"c\t{p}\tवाक्य {i}\n" for i, p in enumerate(paths))
    )
    out = tmp_path / "out"
    result = prepare(open_source(str(folder)), "train", out, num_proc=1, progress=False)
    # ids are stems; the second outside.wav and ./in.wav repeat a clip with another text: listed, kept once
    rejected = [json.loads(r) for r in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejected] == [
        ("outside", "outside_clips"),
        ("outside", "conflicting_text"),
        ("link", "outside_clips"),
        ("in", "conflicting_text"),
    ]
    assert sum("not in" in r["detail"] for r in rejected) == 2
    assert result.prepared == 2  # in, inlink (a symlink inside clips/: its own path)
    manifest = _manifest(tmp_path, [(str(outside), "बाहेर")], name="abs.jsonl")
    assert prepare(manifest, None, tmp_path / "out2", num_proc=1, progress=False).prepared == 1


def test_duplicate_rows_keep_the_first_also_after_a_resume(tmp_path):
    rows = [
        ("wav/a.wav", "एक"),
        ("wav/b.wav", "दोन"),
        ("wav/a.wav", " एक "),
        ("wav/a.wav", "तीन"),
        ("wav/b.wav", "दोन"),
    ]
    source, out = _manifest(tmp_path, rows), tmp_path / "out"
    result = prepare(source, None, out, num_proc=1, shard_size=2, progress=False)
    assert load_prepared(out)["text"] == ["एक", "दोन"]  # a with another text: kept once (issue 29 item 8)
    assert result.rejected == {"conflicting_text": 1, "duplicate": 2}
    details = [json.loads(r)["detail"] for r in (out / "rejected.jsonl").read_text().splitlines()]
    assert details == [
        "same audio and text as the earlier row a",
        "same audio as the earlier row a, another text",
        "same audio and text as the earlier row b",
    ]
    (out / "shards" / "shard-00002.arrow").unlink()  # the last shard holds only the second b
    meta = json.loads((out / "prepared.json").read_text())
    (out / "prepared.json").write_text(json.dumps(meta | {"complete": False}))
    resumed = prepare(source, None, out, num_proc=1, shard_size=2, progress=False)
    assert resumed.processed_now == 1 and resumed.rejected == {"conflicting_text": 1, "duplicate": 2}


def test_a_second_prepare_into_the_same_folder_stops_at_once(tmp_path):
    from whisper_tune.prepare import _locked

    source, out = _manifest(tmp_path, [("wav/a.wav", "एक")]), tmp_path / "out"
    with _locked(out), pytest.raises(UserError, match=rf"another prepare \(pid {os.getpid()}\) is writing .*out"):
        prepare(source, None, out, num_proc=1, progress=False)
    assert prepare(source, None, out, num_proc=1, progress=False).prepared == 1  # the lock went with its holder
    assert prepare(source, None, out, num_proc=1, progress=False).reused


def test_stale_temporary_shards_are_removed(tmp_path):
    source, out = _manifest(tmp_path, [("wav/a.wav", "एक")]), tmp_path / "out"
    prepare(source, None, out, num_proc=1, progress=False)
    meta = json.loads((out / "prepared.json").read_text())
    (out / "prepared.json").write_text(json.dumps(meta | {"complete": False}))
    stale = [out / "shards" / ".shard-00000.arrow.tmp", out / "shards" / ".shard-00001.rejected.jsonl.tmp.999"]
    for path in stale:
        path.write_text("left by a killed run")
    prepare(source, None, out, num_proc=1, progress=False)
    assert not any(p.exists() for p in stale)


def test_full_disk_is_one_error_and_the_run_resumes(tmp_path, monkeypatch):
    import errno

    from datasets.arrow_writer import ArrowWriter

    source, out = _manifest(tmp_path, [("wav/a.wav", "एक"), ("wav/b.wav", "दोन")]), tmp_path / "out"
    finalize = ArrowWriter.finalize
    calls = []

    def full_on_second(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return finalize(self, *a, **kw)

    monkeypatch.setattr(ArrowWriter, "finalize", full_on_second)
    with pytest.raises(UserError, match=r"no space left on the disk of .*out while writing shard-00001: free space"):
        prepare(source, None, out, num_proc=1, shard_size=1, progress=False)
    assert [p.name for p in (out / "shards").glob("*.arrow*")] == ["shard-00000.arrow"]
    assert not list((out / "shards").glob(".*tmp*"))
    monkeypatch.undo()
    resumed = prepare(source, None, out, num_proc=1, shard_size=1, progress=False)
    assert resumed.processed_now == 1 and resumed.prepared == 2


def test_a_folder_without_clips_is_one_error_naming_the_rejections(tmp_path):
    from whisper_tune.config import DataConfig
    from whisper_tune.prepare import prepared_folder

    source, out = _manifest(tmp_path, [("gone.wav", "एक"), ("wav/b.wav", "।")]), tmp_path / "out"
    assert prepare(source, None, out, num_proc=1, progress=False).prepared == 0
    message = rf"{out} holds no clips: all 2 rows were rejected \(missing 1, no_words 1\); see {out}/rejected.jsonl"
    with pytest.raises(UserError, match=message):
        load_prepared(out)
    data = DataConfig(source=str(tmp_path / "m.jsonl"), language="mr")
    with pytest.raises(UserError, match="holds no clips: all 2 rows were rejected"):
        prepared_folder(data, None, tmp_path / "out2", "bundled", num_proc=1, progress=False)
    with pytest.raises(UserError, match="holds no clips: all 2 rows were rejected"):
        load_prepared(tmp_path / "out2")  # a prepared folder given as the data source


def test_a_split_without_rows_is_one_error(tmp_path):
    (tmp_path / "cv" / "clips").mkdir(parents=True)
    (tmp_path / "cv" / "dev.tsv").write_text("client_id\tpath\tsentence\n")
    out = tmp_path / "out"
    prepare(open_source(str(tmp_path / "cv")), "dev", out, num_proc=1, progress=False)
    with pytest.raises(UserError, match=r"holds no clips: split 'dev' of .*cv has no rows"):
        load_prepared(out)
