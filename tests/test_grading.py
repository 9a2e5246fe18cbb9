"""The report card played by real (tiny) models through the inference engine: both columns
decode the same sets, an adapter that changes nothing grades "same" on every line, and the
card reaches the run folder, the model card and the web app's run tab."""

import json

import numpy as np
import pytest
import torch
from conftest import need_espeak

from whisper_tune.grading import CardSize, engine_decode, grade
from whisper_tune.inference import open_engine
from whisper_tune.inference.options import DecodingOptions
from whisper_tune.report_card import LabelledSet

TINY = CardSize(target=3, nonspeech=2, longform_seconds=6.0, english=2, language_id=2)
CPU = torch.device("cpu")
GREEDY = DecodingOptions.greedy()  # the random model would run every fallback temperature


@pytest.fixture(scope="module")
def untrained_adapter(tiny_model_dir, tmp_path_factory):
    """An adapter as training starts it (lora_B = 0): base + adapter is the base itself."""
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_tune.config import ModelConfig
    from whisper_tune.run import write_adapter_meta

    model = get_peft_model(
        WhisperForConditionalGeneration.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    out = tmp_path_factory.mktemp("untrained") / "adapter"
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(tiny_model_dir).save_pretrained(out)
    write_adapter_meta(out, ModelConfig(base=str(tiny_model_dir), quantization="none"), "mr", "transcribe")
    return out


def _target(seconds=(2.0, 3.0, 2.5)) -> LabelledSet:
    rng = np.random.default_rng(0)
    audios = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in seconds]
    return LabelledSet(audios, ["एक दोन", "तीन चार पाच", "सहा"])


def test_an_adapter_that_changes_nothing_grades_same_on_every_line(untrained_adapter, tmp_path):
    need_espeak()
    card = grade(
        None,
        str(untrained_adapter),
        "mr",
        _target(),
        tmp_path,
        TINY,
        torch.device("cpu"),
        decoding=DecodingOptions.greedy(),
    )
    assert len(card.lines) == 10
    assert all(line.base == line.tuned for line in card.lines), [(x.name, x.base, x.tuned) for x in card.lines]
    assert {line.verdict() for line in card.lines} <= {"same", "n/a"}
    assert card.headline().startswith("fine-tune no worse than base on any line")
    assert card.sizes == {"target": 3, "nonspeech": 2, "longform": 1, "english": 2, "language_id": 2}
    written = json.loads((tmp_path / "card.json").read_text(encoding="utf-8"))
    assert written["headline"] == card.headline() and (tmp_path / "card.md").read_text().count("| ") > 10


def test_a_real_adapter_moves_the_tuned_column_only(tiny_adapter, untrained_adapter, tmp_path):
    """The base column does not depend on the adapter: the same for two adapters of one base."""
    need_espeak()
    greedy = DecodingOptions.greedy()
    changed = grade(
        None, str(tiny_adapter), "mr", _target(), tmp_path / "a", TINY, torch.device("cpu"), decoding=greedy
    )
    same = grade(
        None, str(untrained_adapter), "mr", _target(), tmp_path / "b", TINY, torch.device("cpu"), decoding=greedy
    )
    assert [line.base for line in changed.lines] == [line.base for line in same.lines]
    assert [line.tuned for line in changed.lines] != [line.base for line in changed.lines]


def test_engine_decode_detects_the_language_when_none_is_given(tiny_adapter):
    engine = open_engine(None, str(tiny_adapter), device=CPU, decoding=GREEDY)
    audios = [np.zeros(16000, np.float32), 0.1 * np.ones(24000, np.float32)]
    detected = engine.detect_languages(audios)
    decoded = engine_decode(engine)(audios, None)
    assert [found for _, _, found in decoded] == detected  # not the adapter's "mr" unless detected
    forced = engine_decode(engine)(audios, "mr")
    assert [found for _, _, found in forced] == ["mr", "mr"]
    assert all(text == " ".join(s.text for s in segments if s.text).strip() for text, segments, _ in forced)


def test_grade_split_grades_the_first_clips_of_a_prepared_split(untrained_adapter, tmp_path):
    """train, evaluate --card and demo all grade through grade_split: at most ``limit`` of the
    split's clips, in order, with the remark under the headline."""
    from datasets import Dataset

    from whisper_tune.grading import grade_split

    need_espeak()
    target = _target()
    prepared = Dataset.from_dict({"audio": [a.tolist() for a in target.audios], "text": target.labels})
    card = grade_split(None, str(untrained_adapter), "mr", prepared, tmp_path, 2, TINY, "a remark", GREEDY)
    assert card.sizes["target"] == 2
    assert card.remark == "a remark" and "a remark" in (tmp_path / "card.md").read_text(encoding="utf-8")
    # train's card grades its first eval clips: too short for a long file, which takes more of the split
    one = grade_split(None, str(untrained_adapter), "mr", prepared, tmp_path / "one", 1, TINY, decoding=GREEDY)
    assert one.sizes["target"] == 1 and one.sizes["longform"] == 1


def test_a_small_card_takes_more_clips_for_its_long_file_than_for_its_target():
    """A CPU card's 40 short clips may not make 2 minutes: the long file takes as many
    clips as it needs, and never fewer than the target's."""
    from whisper_tune.grading import _first_seconds

    target = _target((2.0, 3.0, 2.5))
    assert len(_first_seconds(target, 1, 4.0).audios) == 2  # 2 s + 3 s reach 4 s
    assert len(_first_seconds(target, 3, 4.0).audios) == 3  # never fewer than the target's clips
    assert len(_first_seconds(target, 1, 60.0).audios) == 3  # all there is: too short, the lines say n/a
    assert _first_seconds(target, None, 4.0) is target  # no limit: every clip
