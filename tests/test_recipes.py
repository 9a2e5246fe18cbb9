"""Every shipped recipe loads and validates (a renamed key must not reach users first)."""

from importlib import resources
from pathlib import Path

import pytest

from whisper_tune.config import TrainConfig, load_train_config
from whisper_tune.quantization import HOLDINGS

RECIPES = sorted(Path(str(resources.files("whisper_tune") / "recipes")).glob("*.yaml"))


def test_recipes_are_shipped():
    assert {p.stem for p in RECIPES} == {"demo", "marathi-large-v2-int8", "marathi-large-v3", "marathi-large-v3-turbo"}


def test_v3_recipes_stop_early_on_the_eval_metric():
    for name in ("marathi-large-v3", "marathi-large-v3-turbo"):
        cfg = load_train_config(name)
        assert cfg.eval.patience and cfg.eval.every > 0 and cfg.model.base.startswith("openai/whisper-large-v3")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_by_path_and_by_name(path):
    cfg = load_train_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.quantization in HOLDINGS
    assert load_train_config(path.stem) == cfg
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# whisper-tune train --config recipes/"), "line 1 says how to run it"


def test_reference_recipe_is_value_for_value():
    cfg = load_train_config("marathi-large-v2-int8")
    assert (cfg.model.base, cfg.model.quantization, cfg.model.int8_threshold) == (
        "openai/whisper-large-v2",
        "int8",
        6.0,
    )
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules()) == (
        32,
        64,
        0.05,
        ["q_proj", "v_proj"],
    )
    assert (cfg.train.learning_rate, cfg.train.warmup_steps, cfg.train.epochs, cfg.train.batch_size) == (1e-3, 50, 3, 8)
    assert (cfg.data.train_split, cfg.eval.max_new_tokens) == ("train+dev", 128)
    assert (cfg.augment.enabled, cfg.train.lr_schedule) == (False, "linear")  # the recipe augments nothing


def test_holdings_match_the_config_names():
    from whisper_tune.config import QUANTIZATIONS

    assert set(HOLDINGS) == set(QUANTIZATIONS)
