import csv
import json

import pytest
from conftest import write_tone

from whisper_tune.errors import UserError
from whisper_tune.sources import CommonVoiceSource, HFSource, ManifestSource, open_source, split_names


def _tsv_rows(folder, split):
    with open(folder / f"{split}.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# ---- Common Voice ----------------------------------------------------------------------


def test_common_voice_splits_and_rows(small_corpus):
    src = open_source(str(small_corpus))
    assert isinstance(src, CommonVoiceSource)
    # the release's splits, then other clip lists
    assert src.splits() == ["train", "dev", "test", "validated", "unseen", "unseen-voices"]
    rows = list(src.rows("test"))
    expected = _tsv_rows(small_corpus, "test")
    assert [r.text for r in rows] == [e["sentence"] for e in expected]
    assert all(
        r.audio.endswith(".mp3") and (small_corpus / "clips" / r.audio.rsplit("/", 1)[-1]).exists() for r in rows
    )


def test_common_voice_combined_and_aliased_splits(small_corpus):
    src = open_source(str(small_corpus))
    both = list(src.rows("train+dev"))
    assert len(both) == src.count("train") + src.count("dev") == src.count("train+validation")
    assert [r.id for r in both] == [r.id for r in src.rows("train")] + [r.id for r in src.rows("dev")]


def test_common_voice_parent_folder_with_language(small_corpus):
    src = open_source(f"cv:{small_corpus.parent}", language="mr")
    assert src.folder == small_corpus


def test_unknown_split_lists_available(small_corpus):
    with pytest.raises(UserError, match="split 'tets'.*available: train, dev, test"):
        list(open_source(str(small_corpus)).rows("tets"))


def test_not_a_common_voice_folder(tmp_path):
    with pytest.raises(UserError, match="not a Common Voice release folder"):
        open_source(f"cv:{tmp_path}")


def test_split_names():
    assert split_names("train+ dev") == ["train", "dev"]
    with pytest.raises(UserError):
        split_names("+")


# ---- manifests -------------------------------------------------------------------------


def _clips(tmp_path, n=3):
    (tmp_path / "wav").mkdir()
    return [write_tone(tmp_path / "wav" / f"c{i}.wav", seconds=0.5) for i in range(n)]


def test_csv_manifest_resolves_relative_paths(tmp_path):
    clips = _clips(tmp_path)
    (tmp_path / "m.csv").write_text(
        "file,transcript\n" + "".join(f"wav/{c.name},text {i}\n" for i, c in enumerate(clips))
    )
    src = open_source(str(tmp_path / "m.csv"))
    assert isinstance(src, ManifestSource) and src.splits() is None
    rows = list(src.rows(None))
    assert [r.audio for r in rows] == [str(c) for c in clips]
    assert [r.text for r in rows] == ["text 0", "text 1", "text 2"]


def test_tsv_and_jsonl_manifests_with_named_columns(tmp_path):
    clips = _clips(tmp_path, 2)
    (tmp_path / "m.tsv").write_text("wav\twords\n" + "".join(f"wav/{c.name}\tx\n" for c in clips))
    assert len(list(open_source(str(tmp_path / "m.tsv"), audio_column="wav", text_column="words").rows(None))) == 2
    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps({"audio": str(c), "text": "y", "split": s}) + "\n" for c, s in zip(clips, ["train", "test"]))
    )
    src = open_source(str(tmp_path / "m.jsonl"))
    assert src.splits() == ["test", "train"]
    assert [r.audio for r in src.rows("test")] == [str(clips[1])]  # absolute paths stay as they are


def test_manifest_wrong_column_names_the_columns(tmp_path):
    (tmp_path / "m.csv").write_text("path,text\na.wav,hi\n")
    with pytest.raises(UserError, match="no text column 'sentence'; its columns are path, text"):
        open_source(str(tmp_path / "m.csv"), text_column="sentence")
    (tmp_path / "n.csv").write_text("a,b\nx,y\n")
    with pytest.raises(UserError, match="no audio column among"):
        open_source(str(tmp_path / "n.csv"))


def test_manifest_missing_text_is_none_not_a_string(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "text": None}) + "\n")
    assert next(open_source(str(tmp_path / "m.jsonl")).rows(None)).text is None


def _cv_folder(tmp_path, tsv: bytes):
    (tmp_path / "clips").mkdir()
    (tmp_path / "train.tsv").write_bytes(tsv)
    return tmp_path


def test_common_voice_tsv_in_another_encoding_names_file_and_line(tmp_path):
    folder = _cv_folder(tmp_path, "client_id\tpath\tsentence\nc\ta.mp3\tok\nc\tb.mp3\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"train.tsv is not UTF-8 \(line 3 has the byte 0xe9\): re-save it as UTF-8"):
        list(open_source(str(folder)).rows("train"))


def test_common_voice_tsv_with_bom_and_crlf(tmp_path):
    folder = _cv_folder(tmp_path, "\ufeffclient_id\tpath\tsentence\r\nc\ta.mp3\tएक\r\n".encode())
    rows = list(open_source(str(folder)).rows("train"))
    assert [(r.id, r.text) for r in rows] == [("a", "एक")]
    assert rows[0].root == str(folder / "clips")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json"])
def test_manifest_with_bom_and_crlf(tmp_path, suffix):
    clips = _clips(tmp_path, 2)
    if suffix == ".jsonl":
        body = "".join(json.dumps({"audio": f"wav/{c.name}", "text": f"t {i}"}) + "\r\n" for i, c in enumerate(clips))
    elif suffix == ".json":
        body = json.dumps([{"audio": f"wav/{c.name}", "text": f"t {i}"} for i, c in enumerate(clips)], indent=1)
        body = body.replace("\n", "\r\n")
    else:
        sep = "\t" if suffix == ".tsv" else ","
        body = f"audio{sep}text\r\n" + "".join(f"wav/{c.name}{sep}t {i}\r\n" for i, c in enumerate(clips))
    (tmp_path / f"m{suffix}").write_bytes(("\ufeff" + body).encode())
    src = open_source(str(tmp_path / f"m{suffix}"))
    assert src.audio_column == "audio"
    assert [(r.audio, r.text) for r in src.rows(None)] == [(str(c), f"t {i}") for i, c in enumerate(clips)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_in_another_encoding_names_file_and_line(tmp_path, suffix):
    lines = (
        ["audio,text", "a.wav,ok", "b.wav,caf\xe9"] if suffix == ".csv" else ['{"audio": "a.wav", "text": "caf\xe9"}']
    )
    (tmp_path / f"m{suffix}").write_bytes("\n".join(lines).encode("cp1252"))
    line = 3 if suffix == ".csv" else 1
    with pytest.raises(UserError, match=rf"m\{suffix} is not UTF-8 \(line {line} has the byte 0xe9\): re-save"):
        open_source(str(tmp_path / f"m{suffix}"))


@pytest.mark.parametrize(("line", "kind"), [("[1, 2]", "array"), ('"x"', "string"), ("3", "number")])
def test_jsonl_line_that_is_not_an_object_is_named(tmp_path, line, kind):
    (tmp_path / "m.jsonl").write_text(f'{{"audio": "a.wav", "text": "t"}}\n\n{line}\n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"m.jsonl line 3 is a JSON {kind}, not an object"):
        open_source(str(tmp_path / "m.jsonl"))


def test_jsonl_line_that_is_not_json_is_named(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "t"}\n{"audio": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"m.jsonl line 2 is not JSON"):
        open_source(str(tmp_path / "m.jsonl"))


def test_json_list_of_non_objects_is_refused(tmp_path):
    (tmp_path / "m.json").write_text("[[1, 2]]", encoding="utf-8")
    with pytest.raises(UserError, match="must hold a JSON list of objects"):
        open_source(str(tmp_path / "m.json"))


# ---- Hugging Face datasets -------------------------------------------------------------


@pytest.fixture()
def hf_dataset(tmp_path):
    import datasets

    clips = _clips(tmp_path, 4)
    ds = datasets.Dataset.from_dict({"speech": [str(c) for c in clips], "transcription": [f"t{i}" for i in range(4)]})
    ds = ds.cast_column("speech", datasets.Audio())
    dd = datasets.DatasetDict({"train": ds.select(range(3)), "test": ds.select([3])})
    return dd, clips


def test_save_to_disk_folder(tmp_path, hf_dataset):
    dd, clips = hf_dataset
    dd.save_to_disk(str(tmp_path / "saved"))
    src = open_source(str(tmp_path / "saved"))
    assert isinstance(src, HFSource) and src.splits() == ["train", "test"]
    assert (src.audio_column, src.text_column) == ("speech", "transcription")
    rows = list(src.rows("train+test"))
    assert [r.text for r in rows] == ["t0", "t1", "t2", "t3"]
    assert all(isinstance(r.audio, (str, bytes)) for r in rows)


@pytest.mark.parametrize("streaming", [False, True])
def test_parquet_folder_embeds_bytes(tmp_path, hf_dataset, streaming):
    import datasets

    from whisper_tune.audio import load_audio

    _, clips = hf_dataset
    expected = load_audio(clips[3])
    (tmp_path / "pq").mkdir()
    for split, idx in (("train", [0, 1, 2]), ("test", [3])):
        ds = datasets.Dataset.from_dict(
            {
                "audio": [{"bytes": clips[i].read_bytes(), "path": clips[i].name} for i in idx],
                "text": [f"t{i}" for i in idx],
            }
        ).cast_column("audio", datasets.Audio())
        ds.to_parquet(str(tmp_path / "pq" / f"{split}.parquet"))
    for c in clips:
        c.unlink()  # only the embedded bytes remain
    src = open_source(f"hf:{tmp_path / 'pq'}", streaming=streaming)
    assert src.count("test") == (None if streaming else 1)
    (row,) = list(src.rows("test"))
    assert row.text == "t3" and isinstance(row.audio, bytes) and row.id == "c3"
    assert (load_audio(row.audio) == expected).all()


def test_hf_wrong_column(tmp_path, hf_dataset):
    dd, _ = hf_dataset
    dd.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UserError, match="no text column 'sentence'; its columns are speech, transcription"):
        open_source(str(tmp_path / "saved"), text_column="sentence")


def test_missing_source_and_unreachable_hub(tmp_path):
    with pytest.raises(UserError, match="not found: give a Common Voice folder"):
        open_source(str(tmp_path / "nothing-here"))
    with pytest.raises(UserError, match="could not load hub dataset"):
        open_source("nobody/no-such-dataset-xyz")


def test_open_source_knows_prepared_folders_and_split_aliases(small_corpus, tmp_path):
    from whisper_tune.config import DataConfig
    from whisper_tune.prepare import prepare
    from whisper_tune.sources import PreparedSource

    cv = open_source(DataConfig(source=str(small_corpus), language="mr"))
    assert isinstance(cv, CommonVoiceSource) and cv.check_split("train+validation") == ["train", "dev"]
    assert ManifestSource.split_aliases == {}  # only Common Voice knows 'validation'
    out = prepare(cv, "test", tmp_path / "prepared", num_proc=1, progress=False).out
    prepared = open_source(DataConfig(source=str(out)))
    assert isinstance(prepared, PreparedSource) and prepared.folder == out
    with pytest.raises(UserError, match="prepared already"):
        list(prepared.rows("test"))


def test_common_voice_csv_quoted_sentences_are_unquoted_raw_quotes_kept(tmp_path):
    """Mozilla writes quotes raw; copies re-saved with pandas (as the published samples
    are) quote a sentence holding one. Both read as the sentence that was spoken."""
    tsv = (
        "client_id\tpath\tsentence\n"
        'c\ta.mp3\t"""Тэгж ч"" дотор байлаа."\n'
        'c\tb.mp3\t"Ийм гэдэг"" хэмээн."\n'
        'c\tc.mp3\t"Hi" he said\n'
        'c\td.mp3\tplain "quoted" word\n'
    )
    folder = _cv_folder(tmp_path, tsv.encode())
    assert [r.text for r in open_source(str(folder)).rows("train")] == [
        '"Тэгж ч" дотор байлаа.',
        'Ийм гэдэг" хэмээн.',
        '"Hi" he said',
        'plain "quoted" word',
    ]


def test_common_voice_rows_name_their_speaker(small_corpus):
    rows = list(open_source(str(small_corpus)).rows("train"))
    assert [r.speaker for r in rows] == [e["client_id"] or None for e in _tsv_rows(small_corpus, "train")]


def test_hf_dataset_slices_by_speaker_and_streaming_refuses_a_slice(tmp_path, hf_dataset):
    dd, _ = hf_dataset
    dd = dd.map(lambda r, i: {"client_id": f"spk{i % 2}"}, with_indices=True)
    dd.save_to_disk(str(tmp_path / "saved"))
    src = open_source(str(tmp_path / "saved"))
    head, tail = list(src.rows("train[:50%]")), list(src.rows("train[50%:]"))
    assert len(head) + len(tail) == 3 and {r.speaker for r in head}.isdisjoint(r.speaker for r in tail)
    streaming = open_source(str(tmp_path / "saved"), streaming=True)
    with pytest.raises(UserError, match=r"'train\[:50%\]': a slice needs the whole split.*drop --streaming"):
        list(streaming.rows("train[:50%]"))
