"""data.replay: another language's clips, prepared with their own language token and swapped
in for a seeded share of the training samples (the run with replay on, resumed exactly,
is in test_preserve.py)."""

import re

import numpy as np
import pytest

from whisper_tune.config import DataConfig, PreserveSettings, ReplaySettings, load_train_config
from whisper_tune.errors import UserError
from whisper_tune.features import set_prefix
from whisper_tune.prepare import load_prepared
from whisper_tune.preserve import Preserver
from whisper_tune.replay import check_replay, prepare_replay, replay_data, replay_record


def _data(source, share=0.25, language="english"):
    return DataConfig(task="transcribe", replay=ReplaySettings(source=str(source), language=language, share=share))


def test_replay_is_off_by_default_and_takes_the_runs_task():
    assert replay_data(DataConfig()) is None
    replayed = replay_data(_data("somewhere"))
    assert (replayed.source, replayed.language, replayed.train_split, replayed.task) == (
        "somewhere",
        "en",
        "train",
        "transcribe",
    )


def test_replay_settings_are_checked_in_one_line():
    for overrides, says in (
        (["data.replay.share=0.2"], "data.replay.share needs data.replay.source"),
        (["data.replay.share=1", "data.replay.source=x"], "data.replay.share must be a share of samples in [0, 1)"),
        (["data.replay.languag=en"], "data.replay.languag: unknown key"),
    ):
        with pytest.raises(UserError, match=re.escape(says)) as e:
            load_train_config(None, overrides)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown language"):
        check_replay(_data("x", language="elvish"), progress=False)
    with pytest.raises(UserError):
        check_replay(_data("/no/such/corpus"), progress=False)


@pytest.fixture(scope="module")
def replayed(four_clips, processor_dir, tmp_path_factory):
    """The four-clip manifest prepared as an English replay split."""
    data = _data(four_clips)
    folder = prepare_replay(data, tmp_path_factory.mktemp("replay") / "prepared", str(processor_dir), progress=False)
    return data, load_prepared(folder)


def test_replayed_clips_carry_their_own_language_token(replayed, tokenizer):
    data, rows = replayed
    assert len(rows) == 4
    for labels in rows["labels"]:
        assert tokenizer.convert_ids_to_tokens(labels[:4]) == [
            "<|startoftranscript|>",
            "<|en|>",
            "<|transcribe|>",
            "<|notimestamps|>",
        ]
    assert replay_record(data, len(rows)) | {"source": "-"} == {
        "source": "-",
        "language": "en",
        "split": "train",
        "share": 0.25,
        "clips": 4,
    }


def test_a_seeded_share_of_samples_is_replayed(replayed, tokenizer):
    _, rows = replayed
    set_prefix(tokenizer, "mr")
    rows = rows.select_columns(["audio", "labels"]).with_format("numpy")
    off = PreserveSettings(nonspeech_share=0.0, timestamp_share=0.0)  # replay alone
    pres = Preserver.from_settings(off, 3, tokenizer, replay=rows, replay_share=0.25)
    labels = np.asarray(tokenizer("नमस्कार").input_ids)
    examples = [{"audio": np.zeros(16000, np.float32), "labels": labels, "index": i, "epoch": 0} for i in range(2000)]
    swapped = pres.swap(examples)
    replayed_at = [i for i, e in enumerate(swapped) if e["plan"].swap == "replay"]
    assert abs(len(replayed_at) / 2000 - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 2000)
    en = tokenizer.convert_tokens_to_ids("<|en|>")
    for i, e in enumerate(swapped[:200]):
        is_replayed = i in replayed_at
        assert (int(e["labels"][1]) == en) == is_replayed
        if is_replayed:  # the replayed clip's own audio and transcript
            row = rows[e["plan"].replay_row]
            assert np.array_equal(e["audio"], row["audio"]) and np.array_equal(e["labels"], row["labels"])
    assert len({e["plan"].replay_row for e in swapped if e["plan"].swap}) == 4  # every replayed clip comes up
    again = pres.swap(examples[:50])
    assert [e["plan"] for e in again] == [e["plan"] for e in swapped[:50]]  # seeded: the same draw again
