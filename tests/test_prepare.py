import json
import shutil

import numpy as np
import pytest
from conftest import write_tone

from whisper_tune.audio import load_audio
from whisper_tune.errors import UserError
from whisper_tune.prepare import PrepareOptions, load_prepared, prepare
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
