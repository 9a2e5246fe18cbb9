"""batch_size / gradient_checkpointing auto: the search against a fake memory meter, the real
meter on the tiny model (out of memory caught, nothing left changed), the cache, the config,
run.json and ``bench fit``."""

import json

import pytest
import torch

from whisper_tune import fit
from whisper_tune.config import LoraSettings, ModelConfig, TrainSettings, load_train_config, parse_memory
from whisper_tune.errors import UserError
from whisper_tune.fit import Candidate, FitSpace, Probe, search

GIB = 2**30


class FakeMeter:
    """A model of large-v2's memory and speed: ``base`` GiB held, and per clip 1.8 GiB with no
    recomputation down to 0.12 GiB with all of it; a step costs 0.1 s plus 25 ms per clip,
    a third more per clip for the recomputed share. Out of memory above ``cap``."""

    def __init__(self, cap_gib, base_gib=3.5, slope0=1.8, slope1=0.12):
        self.cap, self.base, self.slope0, self.slope1 = cap_gib * GIB, base_gib * GIB, slope0, slope1
        self.calls = []

    def peak(self, c: Candidate) -> int:
        per_clip = self.slope0 * (1 - c.share) + self.slope1 * c.share
        return int(self.base + c.batch * per_clip * GIB)

    def step_s(self, c: Candidate) -> float:
        return 0.1 + c.batch * 0.025 * (1 + c.share / 3)

    def __call__(self, c: Candidate) -> Probe:
        self.calls.append(c)
        peak = self.peak(c)
        return Probe(c, None if peak > self.cap else peak, None if peak > self.cap else self.step_s(c))


def _space(effective=32, shares=fit.SHARES):
    return FitSpace(effective, tuple(b for b in range(1, effective + 1) if effective % b == 0), tuple(shares))


def _brute_force(space, meter, limit):
    """The fastest of every candidate that fits under ``limit`` (ties: the lower peak)."""
    fitting = [
        Probe(Candidate(b, s), meter.peak(Candidate(b, s)), meter.step_s(Candidate(b, s)))
        for b in space.batches
        for s in space.shares
        if meter.peak(Candidate(b, s)) <= limit
    ]
    return fit._fastest(fitting)


@pytest.mark.parametrize("cap_gib", [5, 8, 12, 16, 24, 40, 80])
@pytest.mark.parametrize("effective", [8, 32, 64])
def test_search_finds_the_fastest_candidate_that_fits_with_few_probes(cap_gib, effective):
    space, meter = _space(effective), FakeMeter(cap_gib)
    limit = int(cap_gib * GIB * (1 - fit.MARGIN))
    best, probes = search(space, meter, limit, base_bytes=int(meter.base))
    expected = _brute_force(space, meter, limit)
    assert (best.candidate if best else None) == (expected.candidate if expected else None)
    assert best is None or best.peak_bytes <= limit  # the margin is kept
    assert len(meter.calls) == len(set(meter.calls)) == len(probes)  # no candidate measured twice
    assert len(probes) <= 2 * len(space.shares) + 2 < len(space.batches) * len(space.shares)


def test_search_with_out_of_memory_everywhere_returns_none():
    meter = FakeMeter(cap_gib=3)  # the model alone takes 3.5
    best, probes = search(_space(), meter, int(3 * GIB * 0.9), base_bytes=int(meter.base))
    assert best is None
    assert all(p.peak_bytes is None for p in probes)


def test_a_fixed_batch_searches_the_share_and_a_fixed_share_the_batch():
    meter = FakeMeter(cap_gib=24)
    limit = int(24 * GIB * 0.9)
    best, _ = search(FitSpace(32, (32,), fit.SHARES), meter, limit, int(meter.base))
    assert best.candidate == Candidate(32, 0.75)  # 20.8 GiB; half the layers at batch 32 would take 34
    assert all(c.batch == 32 for c in meter.calls)
    meter = FakeMeter(cap_gib=16)
    best, _ = search(_space(shares=(1.0,)), meter, limit, int(meter.base))
    assert best.candidate == Candidate(32, 1.0)
    assert all(c.share == 1.0 for c in meter.calls)


def test_near_ties_go_to_the_lower_peak():
    fast = Probe(Candidate(16, 0.5), 12 * GIB, 16 / 40.0)  # 40 samples/s
    nearly = Probe(Candidate(8, 0.0), 9 * GIB, 8 / 39.5)  # 39.5 samples/s: within 3 %
    assert fit._fastest([fast, nearly]) is nearly
    slower = Probe(Candidate(8, 0.0), 9 * GIB, 8 / 30.0)
    assert fit._fastest([fast, slower]) is fast


@pytest.mark.parametrize(
    ("effective", "batch", "accum"), [(32, 8, 4), (8, 8, 1), (6, 6, 1), (12, 6, 2), (2, 2, 1), (1, 1, 1)]
)
def test_the_cpu_plan_keeps_the_effective_batch_without_a_probe(effective, batch, accum):
    cfg = load_train_config(None, ["train.batch_size=auto", f"train.effective_batch={effective}"])
    plan = fit.plan_for(cfg, model=None, device=torch.device("cpu"), label_tokens=40)
    assert (plan.batch, plan.grad_accum, plan.share) == (batch, accum, 1.0)  # the recipe's share stays
    assert plan.batch * plan.grad_accum == effective
    assert "CPU" in plan.line() and "no probe" in plan.line()
    auto = fit.plan_for(load_train_config(None, ["model.gradient_checkpointing=auto"]), None, torch.device("cpu"), 40)
    assert (auto.batch, auto.grad_accum, auto.share) == (8, 1, 0.0)  # a fixed batch stays; no recomputation


def test_resolved_config_holds_the_plan_and_validates():
    cfg = load_train_config(None, ["train.batch_size=auto", "model.gradient_checkpointing=auto"])
    plan = fit.Plan(16, 2, 0.5, 32, "cuda:0", 16.0, 12.0, 40.0)
    done = fit.resolved(cfg, plan)
    assert (done.train.batch_size, done.train.grad_accum, done.model.gradient_checkpointing) == (16, 2, 0.5)
    assert done.train.effective_batch is None
    assert not fit.wants_plan(done) and fit.wants_plan(cfg)
    assert fit.Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


# ---- config ----------------------------------------------------------------------------


def test_auto_is_accepted_and_the_old_values_still_work():
    cfg = load_train_config(
        None, ["train.batch_size=auto", "model.gradient_checkpointing=auto", "train.effective_batch=32"]
    )
    assert (cfg.train.batch_size, cfg.model.gradient_checkpointing, cfg.train.effective_batch) == ("auto", "auto", 32)
    cfg = load_train_config(None, ["train.batch_size=16", "model.gradient_checkpointing=0.5", "train.gpu_memory=16GiB"])
    assert (cfg.train.batch_size, cfg.model.gradient_checkpointing) == (16, 0.5)
    assert ModelConfig(gradient_checkpointing=False).gradient_checkpointing is False


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("train.batch_size=big", "train.batch_size must be a whole number above 0 or auto"),
        ("train.batch_size=0", "train.batch_size must be a whole number above 0 or auto"),
        ("model.gradient_checkpointing=sometimes", "gradient_checkpointing must be true, false, a share"),
        ("model.gradient_checkpointing=2", "gradient_checkpointing must be true, false, a share"),
        ("train.effective_batch=32", "train.effective_batch is for train.batch_size=auto"),
        ("train.gpu_memory=lots", "'lots' is not a memory size: write it as 16GiB"),
        ("train.gpu_memory=-3GiB", "is not a memory size"),
    ],
)
def test_nonsense_is_refused_in_one_line(override, says):
    with pytest.raises(UserError) as e:
        load_train_config(None, [override])
    assert says in str(e.value) and "\n" not in str(e.value)


def test_auto_takes_the_accumulation_itself():
    with pytest.raises(UserError, match="grad_accum is chosen by train.batch_size=auto: set train.effective_batch"):
        load_train_config(None, ["train.batch_size=auto", "train.grad_accum=4"])
    with pytest.raises(UserError, match="effective_batch must be in"):
        load_train_config(None, ["train.batch_size=auto", "train.effective_batch=0"])


@pytest.mark.parametrize(
    ("text", "size"),
    [("16GiB", 16 * GIB), ("12.5 GiB", int(12.5 * GIB)), ("16GB", 16 * 10**9), ("8000MiB", 8000 * 2**20)],
)
def test_memory_sizes(text, size):
    assert parse_memory(text) == size


# ---- the real meter on the tiny model --------------------------------------------------


@pytest.fixture()
def tiny_run(tiny_model_dir):
    """(config, model) of a tiny LoRA run with auto batch and checkpointing on the CPU."""
    from whisper_tune.modeling import lora_model

    cfg = load_train_config(
        None,
        [
            f"model.base={tiny_model_dir}",
            "model.quantization=none",
            "model.gradient_checkpointing=auto",
            "train.batch_size=auto",
            "train.effective_batch=4",
            "train.warmup_steps=0",  # a live learning rate: the probe's steps would change the weights
            "lora.r=4",
            "lora.alpha=8",
        ],
    )
    torch.manual_seed(0)
    return cfg, lora_model(cfg.model, cfg.lora, torch.device("cpu"))


def _oom_above(model, batch: int):
    """A forward hook that runs out of memory for batches larger than ``batch``, as a GPU would."""

    def hook(module, args, kwargs):
        features = kwargs.get("input_features", args[0] if args else None)
        if features is not None and features.shape[0] > batch:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    return model.get_base_model().model.encoder.register_forward_pre_hook(hook, with_kwargs=True)


def test_the_probe_survives_out_of_memory_and_leaves_the_model_untouched(tiny_run, monkeypatch, tmp_path):
    monkeypatch.setenv("WHISPER_TUNE_CACHE", str(tmp_path))
    cfg, model = tiny_run
    hook = _oom_above(model, 1)  # a CPU step of 30 s inputs takes seconds: keep the fitting ones at batch 1
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    rng = torch.get_rng_state()
    plan = fit.plan_for(cfg, model, torch.device("cpu"), label_tokens=12, probe_steps=2, probe_on_cpu=True)
    hook.remove()
    assert (plan.batch, plan.grad_accum, plan.effective_batch) == (1, 4, 4)
    assert any(p["peak_gib"] is None for p in plan.probes)  # some candidates ran out of memory
    assert torch.equal(torch.get_rng_state(), rng)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, before[name]), name
            assert p.grad is None
    # the training that follows runs: the plan's share and accumulation, a real optimizer step
    from whisper_tune.optimization import build_optimizer

    fit.use_plan(model, plan)
    layers = model.get_base_model().model.encoder.layers
    assert [layer.gradient_checkpointing for layer in layers] == [i < round(plan.share * 2) for i in range(2)]
    _, _, step = build_optimizer(model, fit.resolved(cfg, plan), total_steps=4, device=torch.device("cpu"))
    batch = fit.random_batch(model.config, plan.batch, 12, torch.device("cpu"))
    times, outcome = fit.timed_steps(step, batch, plan.grad_accum, 1, torch.device("cpu"))
    assert torch.isfinite(outcome.loss) and not outcome.skipped
    assert outcome.samples == plan.batch * plan.grad_accum
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_the_plan_is_cached_per_settings(tiny_run, monkeypatch, tmp_path):
    monkeypatch.setenv("WHISPER_TUNE_CACHE", str(tmp_path))
    cfg, model = tiny_run
    _oom_above(model, 1)
    calls = []
    measure = fit.StepMeter.__call__
    monkeypatch.setattr(fit.StepMeter, "__call__", lambda self, c: calls.append(c) or measure(self, c))
    cpu = torch.device("cpu")
    monkeypatch.setattr(fit, "memory_budget", lambda device, cap: 64 * GIB)  # free RAM moves between calls
    first = fit.plan_for(cfg, model, cpu, label_tokens=12, probe_steps=2, probe_on_cpu=True)
    probed = len(calls)
    assert probed > 0 and not first.cached
    again = fit.plan_for(cfg, model, cpu, label_tokens=12, probe_steps=2, probe_on_cpu=True)
    assert len(calls) == probed and again.cached
    assert (again.batch, again.grad_accum, again.share) == (first.batch, first.grad_accum, first.share)
    assert "(cached)" in again.line()
    longer = fit.plan_for(cfg, model, cpu, label_tokens=40, probe_steps=2, probe_on_cpu=True)  # other settings
    assert len(calls) > probed and not longer.cached
    assert len(list((tmp_path / "fit").glob("*.json"))) == 2


def test_nothing_fits_is_one_line(tiny_run, monkeypatch, tmp_path):
    monkeypatch.setenv("WHISPER_TUNE_CACHE", str(tmp_path))
    cfg, model = tiny_run
    cfg.train.gpu_memory, cfg.train.effective_batch = "64MiB", 1  # below what the process holds already
    with pytest.raises(UserError, match="does not fit in .* GiB .* use model.quantization=int8-wo") as e:
        fit.plan_for(cfg, model, torch.device("cpu"), label_tokens=12, probe_steps=1, probe_on_cpu=True)
    assert "\n" not in str(e.value)


def test_checkpoint_share_changes_which_layers_recompute(tiny_model_dir):
    from whisper_tune.modeling import lora_model

    cfg = ModelConfig(base=str(tiny_model_dir), quantization="none", gradient_checkpointing="auto")
    model = lora_model(cfg, LoraSettings(r=4, alpha=8), torch.device("cpu"))
    inner = model.get_base_model().model
    assert [layer.gradient_checkpointing for layer in inner.encoder.layers] == [True, True]  # auto starts at all
    for share, flags in ((0.0, [False, False]), (0.5, [True, False]), (1.0, [True, True])):
        fit.use_plan(model, fit.Plan(1, 1, share, 1, "cpu", None))
        assert [layer.gradient_checkpointing for layer in inner.encoder.layers] == flags
        assert [layer.gradient_checkpointing for layer in inner.decoder.layers] == flags


# ---- the run and the command ---------------------------------------------------------


def test_train_with_auto_writes_the_plan_to_run_json(tiny_model_dir, small_corpus, tmp_path, monkeypatch, caplog):
    from whisper_tune.training import train

    monkeypatch.setenv("WHISPER_TUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cfg = load_train_config(
        None,
        [
            f"model.base={tiny_model_dir}",
            "model.quantization=none",
            "model.gradient_checkpointing=auto",
            f"data.source={small_corpus}",
            "data.train_split=train",
            f"train.output_dir={out}",
            "train.batch_size=auto",
            "train.effective_batch=2",
            "train.max_steps=2",
            "train.num_workers=0",
            "eval.every=-1",
            "lora.r=4",
            "lora.alpha=8",
        ],
    )
    with caplog.at_level("INFO", logger="whisper_tune"):
        result = train(cfg, progress=False)
    record = json.loads((out / "run.json").read_text())
    plan = record["fit"]
    assert plan["batch"] * plan["grad_accum"] == plan["effective_batch"] == 2
    assert record["config"]["train"]["batch_size"] == plan["batch"]  # the resolved config
    assert record["config"]["model"]["gradient_checkpointing"] == plan["share"] == 0.0
    assert "batch_size: auto" in (out / "config.yaml").read_text()  # what was asked
    assert sum(line.startswith("auto: batch") for line in caplog.messages) == 1
    assert result.steps == 2


def test_bench_fit_prints_the_plan_in_one_line(capsys):
    from whisper_tune.cli import main

    assert main(["bench", "fit", "--memory", "16GiB", "train.effective_batch=32"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and out.startswith("auto: batch 8 x 4 accumulated (effective 32)")


def test_train_settings_defaults_are_unchanged():
    t = TrainSettings()
    assert (t.batch_size, t.grad_accum, t.effective_batch, t.gpu_memory) == (8, 1, None, None)


def test_probes_kept_from_a_larger_budget_are_not_measured_again(tiny_run, monkeypatch, tmp_path):
    monkeypatch.setenv("WHISPER_TUNE_CACHE", str(tmp_path))
    cfg, model = tiny_run
    _oom_above(model, 1)
    calls, measured = [], {}
    measure = fit.StepMeter.__call__
    monkeypatch.setattr(fit.StepMeter, "__call__", lambda self, c: calls.append(c) or measure(self, c))
    cpu = torch.device("cpu")
    for cap in ("12GiB", "10GiB"):
        cfg.train.gpu_memory = cap
        monkeypatch.setattr(fit, "memory_budget", lambda device, asked: fit.parse_memory(asked))
        plan = fit.plan_for(cfg, model, cpu, label_tokens=12, probe_steps=1, probe_on_cpu=True, measured=measured)
        assert (plan.batch, plan.grad_accum) == (1, 4)
    assert len(calls) == len(set(calls)) == len(measured)  # the second budget measured nothing twice
    assert "measured under a larger budget" in plan.reason
