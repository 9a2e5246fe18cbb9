"""The demo's flow, on the tiny model (the real run uses Whisper base and takes minutes)."""

import json
import shutil

from whisper_tune.demo import resolve_base, run_demo


def test_demo_flow_and_rerun(tiny_model_dir, demo_corpus, tmp_path, monkeypatch):
    from conftest import need_espeak

    from whisper_tune import grading

    need_espeak()
    tiny = grading.CardSize(target=3, nonspeech=2, longform_seconds=6.0, english=2, language_id=2)
    monkeypatch.setattr(grading.CardSize, "for_this_machine", classmethod(lambda cls: tiny))
    shutil.copytree(demo_corpus, tmp_path / "demo" / "corpus")  # built once per session (conftest)
    lines = []
    result = run_demo(
        tmp_path / "demo",
        model=str(tiny_model_dir),
        steps=2,
        eval_samples=2,
        overrides=["train.batch_size=2", "train.num_workers=0", "lora.r=2", "lora.alpha=4"],
        progress=False,
        report=lines.append,
    )
    assert result.base_source == "given" and result.train["steps"] == 2
    assert result.before.keys() == result.after.keys() == {"test", "unseen", "unseen-voices"}
    assert all({"wer", "cer", "normalized_wer", "normalized_cer"} <= s.keys() for s in result.after.values())
    table = result.table.read_text()
    for split in ("test sentences", "unseen sentences", "test sentences, unseen voices"):
        assert f"| zero-shot | {split} |" in table and f"| fine-tuned (int8-wo base + LoRA) | {split} |" in table
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["after"]["test"]["n"] == saved["after"]["unseen"]["n"] == saved["after"]["unseen-voices"]["n"] == 2
    assert any(line.startswith("zero-shot: test sentences WER") and "unseen sentences WER" in line for line in lines)
    card = json.loads((tmp_path / "demo" / "card" / "card.json").read_text())
    assert result.card == tmp_path / "demo" / "card" / "card.md" and 1 <= card["sizes"]["target"] <= 3  # test clips
    assert any(line.startswith("report card: ") for line in lines)
    # the run stops early and keeps best/ on dev, never on a reported split
    assert "eval_split: dev" in (tmp_path / "demo" / "run" / "config.yaml").read_text()
    # English from the demo's own replay corpus goes into the batches, against forgetting English
    replayed = json.loads((tmp_path / "demo" / "run" / "run.json").read_text())["replay"]
    assert replayed["language"] == "en" and replayed["share"] == 0.2 and replayed["clips"] > 0
    assert replayed["source"] == str(tmp_path / "demo" / "corpus" / "en")
    # A second run reuses the corpus and the adapter instead of training again.
    again = []
    run_demo(tmp_path / "demo", model=str(tiny_model_dir), steps=2, eval_samples=2, progress=False, report=again.append)
    assert any("reusing" in line for line in again)


def test_offline_base_when_the_hub_is_silent(tmp_path, monkeypatch):
    import whisper_tune.demo as demo

    calls = []
    monkeypatch.setattr(demo, "hub_answers", lambda *a, **k: False)
    monkeypatch.setattr(
        "whisper_tune.import_ct2.import_ct2",
        lambda src, out: calls.append((src, out)) or (out.mkdir(parents=True), (out / "config.json").write_text("{}")),
    )
    base, source = resolve_base(tmp_path)
    assert source == "offline package" and calls == [(demo.OFFLINE_PACKAGE, tmp_path / "whisper-base")]
    assert resolve_base(tmp_path) == (base, source) and len(calls) == 1  # imported once
    monkeypatch.setattr(demo, "hub_answers", lambda *a, **k: True)
    assert resolve_base(tmp_path / "other") == (demo.HUB_BASE, "hub")


def test_on_a_gpu_the_demo_trains_longer_and_says_so():
    """The GPU plan is a valid set of recipe overrides that trains longer than the CPU recipe."""
    from whisper_tune.config import load_train_config
    from whisper_tune.demo import device_plan

    cpu, cpu_line = device_plan(cuda=False)
    gpu, gpu_line = device_plan(cuda=True)
    assert cpu == [] and "CPU" in cpu_line
    assert "GPU" in gpu_line and all(o in gpu_line for o in gpu)
    recipe, longer = load_train_config("demo"), load_train_config("demo", gpu)
    assert (
        longer.train.max_steps is None and longer.train.epochs * 1404 / longer.train.batch_size > recipe.train.max_steps
    )
    assert recipe.data.eval_split == longer.data.eval_split == "dev"  # early stopping never looks at test
    assert longer.eval.every == 0 and longer.eval.patience
    assert longer.lora.target_modules() == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
