from dataclasses import dataclass, field

import pytest

from whisper_tune.config import DataConfig, apply_overrides, from_dict, load_yaml
from whisper_tune.errors import UserError


@dataclass
class Inner:
    rate: float = 1.0
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    data: DataConfig = field(default_factory=DataConfig)
    inner: Inner = field(default_factory=Inner)
    steps: int | None = None


def test_nested_values_and_int_for_float():
    cfg = from_dict(Outer, {"data": {"language": "hi", "streaming": True}, "inner": {"rate": 2, "names": ["a"]}})
    assert cfg.data.language == "hi" and cfg.data.streaming is True
    assert cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float) and cfg.inner.names == ["a"]
    assert cfg.steps is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"data": {"langauge": "mr"}}, "data.langauge: unknown key"),
        ({"inner": {"rate": "fast"}}, "inner.rate: expected float"),
        ({"steps": True}, "steps: expected int or null"),
        ({"inner": {"names": "a"}}, "inner.names: expected a list"),
        ({"data": 3}, "data: expected a mapping"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(UserError, match=message):
        from_dict(Outer, data)


def test_overrides_parse_yaml_values():
    data = apply_overrides({"data": {"language": "mr"}}, ["data.language=hi", "inner.rate=3e-4", "steps=10"])
    cfg = from_dict(Outer, data)
    assert (cfg.data.language, cfg.inner.rate, cfg.steps) == ("hi", 3e-4, 10)
    with pytest.raises(UserError, match="not key=value"):
        apply_overrides({}, ["steps"])


def test_load_yaml_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_yaml(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "ok.yaml").write_text("data:\n  language: mr\n")
    assert from_dict(Outer, load_yaml(tmp_path / "ok.yaml")).data.language == "mr"


BAD_SETTINGS = [
    ("train.learning_rate=-1", "train.learning_rate must be positive"),
    ("train.learning_rate=.nan", "train.learning_rate must be positive, got nan"),
    ("train.weight_decay=-1", "train.weight_decay must be zero or more"),
    ("train.warmup_steps=-3", "train.warmup_steps must be zero or more"),
    ("train.max_grad_norm=-1", "train.max_grad_norm must be zero or more"),
    ("train.keep_last=0", "train.keep_last must be positive"),
    ("train.max_steps=-5", "train.max_steps must be positive"),
    ("train.max_steps=0", "train.max_steps must be positive"),
    ("train.epochs=.nan", "train.epochs must be positive"),
    ("eval.batch_size=0", "eval.batch_size must be positive"),
    ("eval.max_new_tokens=-1", "eval.max_new_tokens must be positive"),
    ("eval.every=-2", "eval.every must be -1"),
    ("eval.max_samples=0", "eval.max_samples must be positive"),
    ("data.max_seconds=45", "data.max_seconds must be in (0, 30]"),
    ("lora.dropout=.nan", "lora.dropout in [0, 1)"),
    ("train.seed=-1", "train.seed must be in [0, 2**32)"),
    ("model.attn_implementation=flash", "model.attn_implementation must be sdpa or eager"),
    ("lora.targets=[no_such_proj]", "no_such_proj is not a Linear layer of Whisper"),
    # issue 29 item 6
    ("lora.targets=[]", "lora.targets is empty"),
    ("train.learning_rate=1e300", "train.learning_rate = 1e+300 is absurd: at most 1"),
    ("train.max_steps=1000000000000", "train.max_steps = 1000000000000 is absurd"),
    ("train.grad_accum=1000000", "train.grad_accum = 1000000 is absurd"),
]


@pytest.mark.parametrize("override, message", BAD_SETTINGS, ids=[o for o, _ in BAD_SETTINGS])
def test_out_of_range_settings_are_refused_with_the_key(override, message):
    from whisper_tune.config import load_train_config

    with pytest.raises(UserError) as refused:
        load_train_config(None, [override])
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_key_given_twice_is_refused(tmp_path):
    """Two ``train:`` blocks: PyYAML keeps the second and drops the first without a word."""
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  batch_size: 4\nlora:\n  r: 8\ntrain:\n  learning_rate: 1.0e-4\n")
    with pytest.raises(UserError, match=r"twice.yaml is not valid YAML: key 'train' is given twice \(line 5\)"):
        load_yaml(path)
    path.write_text("train:\n  batch_size: 4\n  batch_size: 8\n")
    with pytest.raises(UserError, match="key 'batch_size' is given twice"):
        load_yaml(path)
    path.write_bytes(b"train:\n  output_dir: \xff\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_yaml(path)
