"""Checkpoints: exact round trips without pickle, refusing old pickles, falling back past damage."""

import json
import logging
import math
import os
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from whisper_tune import checkpoint
from whisper_tune.errors import UserError

# --- helpers ------------------------------------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 5)
        self.out = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.relu(self.proj(x)))


def _lora_model(seed: int):
    """The same tiny base, with LoRA on both layers drawn from ``seed``; dropout makes training draw
    from torch's RNG."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = _Tiny()
    torch.manual_seed(seed)
    config = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.3, target_modules=["proj", "out"], init_lora_weights=False)
    return get_peft_model(base, config)


def _trainer(model):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))
    return optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    """Steps whose data and dropout come from every RNG a resume restores."""
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 6) * (1 + random.random()) + float(np.random.rand())
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def _lora(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _same(a, b) -> bool:
    """Equal in type and bit for bit (nan included), recursively."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        flat = (a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(*flat)
    if isinstance(a, (np.ndarray, np.generic)):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


def _through_json(obj):
    """encode -> strict JSON text + safetensors bytes -> decode, as save and load do."""
    from safetensors.torch import load, save

    tree, tensors = checkpoint.encode(obj)
    return checkpoint.decode(json.loads(json.dumps(tree, allow_nan=False)), load(save(tensors)))


@pytest.fixture()
def two_checkpoints(tmp_path):
    """Checkpoints at steps 2 and 4 with different adapters; returns (folder, model, adapters by step)."""
    model = _lora_model(0)
    optimizer, scheduler = _trainer(model)
    folder, adapters = tmp_path / "checkpoints", {}
    for step in (2, 4):
        _train(model, optimizer, scheduler, 2)
        checkpoint.save(folder, step, model, {"optimizer": optimizer.state_dict(), "epoch": 0})
        adapters[step] = _lora(model)
    return folder, model, adapters


# --- encoding -----------------------------------------------------------------------------------


def test_encode_decode_is_exact_for_every_kind():
    strided = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}, 7: {}},
        "betas": (0.9, 0.999),
        "floats": [math.inf, -math.inf, math.nan, -0.0, 1e-310, 0.1],
        "ints": [2**64 + 1, -5, True, False, None],
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        "arrays": [np.arange(5, dtype=">u4"), np.zeros((0, 2)), np.array(1.5), np.float32(2.5), np.bool_(True)],
        "tensors": [torch.get_rng_state(), torch.randn(2).bfloat16(), torch.tensor([True]), torch.empty(0, 3), strided],
        "ints64": torch.tensor([2**62, -1]),
        "mixed": {1: "one", "1": "str one", (2, 3): "tuple key", None: "none"},
        "looks_tagged": {"__tensor__": "not a tensor"},
        "run": {"train": {"batch_size": 8}, "lora": {"r": 4, "target": ["q", "v"]}, "base": "ü"},
    }
    back = _through_json(state)
    assert _same(state, back)
    assert back["ints64"].dtype == torch.int64 and back["tensors"][0].dtype == torch.uint8
    assert back["tensors"][4].is_contiguous() and back["arrays"][3].dtype == np.float32


def test_encode_refuses_what_it_cannot_bring_back():
    with pytest.raises(TypeError, match="function at optimizer.param_groups.0.fn"):
        checkpoint.encode({"optimizer": {"param_groups": [{"fn": lambda: 0}]}})
    with pytest.raises(TypeError, match="dtype object"):
        checkpoint.encode({"a": np.array([object()])})


def test_rng_state_round_trip_reproduces_every_generator():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()  # leaves a cached gaussian in numpy's state: a float that must come back exactly
    state = _through_json(checkpoint.rng_state())

    def draw():
        return random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()

    first = draw()
    checkpoint.set_rng_state(state)
    assert draw() == first


# --- save / load ----------------------------------------------------------------------------------


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    model = _lora_model(0)
    optimizer, scheduler = _trainer(model)
    _train(model, optimizer, scheduler, 3)
    run = {"batch_size": 4, "grad_accum": 1, "world_size": 1, "lora": {"r": 2, "alpha": 4}}
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": 1, "run": run}
    path = checkpoint.save(tmp_path, 3, model, state)
    _train(model, optimizer, scheduler, 3)
    expected = _lora(model)

    other = _lora_model(1)  # different initial weights, fresh optimizer and RNGs
    optimizer, scheduler = _trainer(other)
    loaded = checkpoint.load(path, other)
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    checkpoint.set_rng_state(loaded["rng"])
    assert loaded["step"] == 3 and loaded["epoch"] == 1 and loaded["run"] == run
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.95)
    _train(other, optimizer, scheduler, 3)
    assert _same(expected, _lora(other))


def test_save_writes_the_pickle_free_layout(two_checkpoints):
    folder, _, _ = two_checkpoints
    path = checkpoint.latest(folder)
    assert path.name == "step-000004" and checkpoint.finished(folder) == [folder / "step-000002", path]
    names = {"adapter_model.safetensors", "adapter_config.json", "training_state.safetensors", "training_state.json"}
    assert names <= {p.name for p in path.iterdir()}  # and PEFT's README.md
    assert not [p for p in path.iterdir() if p.suffix in (".pt", ".pkl", ".bin", ".pth")]
    record = json.loads((path / "training_state.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    assert record["state"]["step"] == 4
    assert set(record["sha256"]) == {"adapter_model.safetensors", "training_state.safetensors"}
    tensors = load_file(str(path / "training_state.safetensors"))
    assert {"optimizer.state.0.exp_avg", "optimizer.state.0.step", "rng.torch"} <= set(tensors)
    assert checkpoint.read_state(path)["step"] == 4


# --- older versions' pickles ----------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``path``: what a crafted training_state.pt could do, harmlessly."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_old_pickled_checkpoint_is_refused_and_never_unpickled(tmp_path):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()  # the payload works when unpickled

    marker = tmp_path / "marker"
    old = tmp_path / "checkpoints" / "step-000010"
    old.mkdir(parents=True)
    (old / "training_state.pt").write_bytes(pickle.dumps({"step": 10, "x": _Payload(marker)}))
    (old / "adapter_model.safetensors").write_bytes(b"")
    model = _lora_model(0)
    before = _lora(model)
    assert checkpoint.latest(tmp_path / "checkpoints") == old  # listed, so that resume refuses it loudly
    for attempt in (
        lambda: checkpoint.load(old, model),
        lambda: checkpoint.read_state(old),
        lambda: checkpoint.resume_state(tmp_path / "checkpoints", model),
    ):
        with pytest.raises(UserError, match="step-000010 .*older whisper-tune.*start a new run") as caught:
            attempt()
        assert "\n" not in str(caught.value) and not isinstance(caught.value, checkpoint.CheckpointUnreadable)
    assert not marker.exists()
    assert _same(before, _lora(model))


# --- damaged checkpoints --------------------------------------------------------------------------


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_tail(path):
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])  # inside the tensor data: the header still parses
    path.write_bytes(bytes(data))


def _edit_state(hashed: bool = True, **changes):
    """Change values of the state in training_state.json; ``hashed=False`` also drops its
    SHA-256 (as a hand edit might), so that the values themselves are checked."""

    def edit(path):
        record = json.loads(path.read_text())
        record["state"] |= changes
        if not hashed:
            del record["state_sha256"]
        path.write_text(json.dumps(record))

    return edit


DAMAGE = {
    "state truncated": ("training_state.safetensors", _truncate, "does not match the SHA-256"),
    "state emptied": ("training_state.safetensors", lambda p: p.write_bytes(b""), r"\(0 bytes\) does not match"),
    "state random bytes": ("training_state.safetensors", lambda p: p.write_bytes(os.urandom(500)), "SHA-256"),
    "state data altered": ("training_state.safetensors", _flip_tail, "does not match the SHA-256"),
    "state missing": ("training_state.safetensors", lambda p: p.unlink(), "training_state.safetensors is missing"),
    "json truncated": ("training_state.json", _truncate, "training_state.json is not valid JSON"),
    "json garbage": ("training_state.json", lambda p: p.write_text("{not json"), "is not valid JSON"),
    "json wrong shape": ("training_state.json", lambda p: p.write_text("[1, 2]"), "expected structure"),
    "json step edited": ("training_state.json", _edit_state(step=3), "state in training_state.json does not match"),
    "json step -50": ("training_state.json", _edit_state(False, step=-50), "step must be a whole number"),
    "json step of another": ("training_state.json", _edit_state(False, step=2), "in the folder of step 4"),
    "json micro_done 1e12": ("training_state.json", _edit_state(False, micro_done=10**12), "micro_done must be"),
    "json optimizer null": ("training_state.json", _edit_state(False, optimizer=None), "optimizer must be a mapping"),
    "json epoch nonsense": ("training_state.json", _edit_state(False, epoch="x"), "epoch must be"),
    "adapter truncated": ("adapter_model.safetensors", _truncate, "adapter_model.safetensors .* does not match"),
    "adapter altered": ("adapter_model.safetensors", _flip_tail, "adapter_model.safetensors .* does not match"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_latest_falls_back_to_the_previous(two_checkpoints, kind, caplog):
    folder, model, adapters = two_checkpoints
    name, damage, reason = DAMAGE[kind]
    damage(folder / "step-000004" / name)
    before = _lora(model)
    with pytest.raises(checkpoint.CheckpointUnreadable, match=reason):
        checkpoint.load(folder / "step-000004", model)
    assert _same(before, _lora(model))  # checked before touching the model: nothing half-loaded

    with caplog.at_level(logging.WARNING, logger="whisper_tune.checkpoint"):
        path, state = checkpoint.resume_state(folder, model)
    assert path == folder / "step-000002" and state["step"] == 2
    assert _same(adapters[2], _lora(model))
    [warning] = [r.getMessage() for r in caplog.records]
    assert "step-000004 is unreadable" in warning and f"falling back to {folder / 'step-000002'}" in warning
    assert "\n" not in warning


def test_no_readable_checkpoint_names_every_one_tried(two_checkpoints, caplog):
    folder, model, _ = two_checkpoints
    for step in (2, 4):
        (folder / f"step-00000{step}" / "training_state.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="whisper_tune.checkpoint"):
        with pytest.raises(UserError, match="tried step-000004, step-000002"):
            checkpoint.resume_state(folder, model)
    assert ["step-000004" in m and "falling back" in m for m in caplog.messages] == [True, False]
    assert "no older checkpoint left" in caplog.messages[1]


def test_resume_state_without_checkpoints_is_none(tmp_path):
    assert checkpoint.resume_state(tmp_path / "missing", None) is None
    (tmp_path / "empty").mkdir()
    assert checkpoint.resume_state(tmp_path / "empty", None) is None


# --- temporary folders ----------------------------------------------------------------------------


def test_clean_stale_removes_dead_writers_leftovers_only(tmp_path):
    dead = tmp_path / ".step-000010.tmp999999999"
    ours = tmp_path / f".step-000008.tmp{os.getpid()}"
    live = tmp_path / f".step-000006.tmp{os.getppid()}"
    replaced = tmp_path / ".step-000002.old999999999"  # step-000002 exists: its new copy landed
    orphan = tmp_path / ".best.old999999999"  # killed between the renames: best/ is missing
    for path in (dead, ours, live, replaced, orphan, tmp_path / "step-000002"):
        path.mkdir()
        (path / "f").write_text("x")
    assert checkpoint.clean_stale(tmp_path) == sorted([dead, ours, replaced])
    assert live.exists() and (tmp_path / "best" / "f").exists() and not orphan.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "best", "step-000002"]


def test_save_cleans_stale_folders_first(tmp_path):
    stale = tmp_path / ".step-000010.tmp999999999"
    stale.mkdir()
    checkpoint.save(tmp_path, 1, _lora_model(0), {})
    assert not stale.exists() and [p.name for p in tmp_path.iterdir()] == ["step-000001"]


def test_write_atomically_replaces_whole_or_not_at_all(tmp_path):
    final = tmp_path / "best"
    checkpoint.write_atomically(final, lambda tmp: (tmp / "a").write_text("1"))
    checkpoint.write_atomically(final, lambda tmp: (tmp / "b").write_text("2"))
    assert [p.name for p in final.iterdir()] == ["b"]

    def fail(tmp):
        (tmp / "c").write_text("3")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        checkpoint.write_atomically(final, fail)
    assert [p.name for p in final.iterdir()] == ["b"]
    assert checkpoint.clean_stale(tmp_path) == [tmp_path / f".best.tmp{os.getpid()}"]


# --- resume compatibility -------------------------------------------------------------------------


def test_resume_differences_names_each_changed_setting():
    saved = {"train": {"batch_size": 8, "grad_accum": 2}, "lora": {"r": 4, "target": ["q", "v"]}, "base": "small"}
    current = {"train": {"batch_size": 16, "grad_accum": 2}, "lora": {"r": 4, "target": ("q", "v")}, "world_size": 2}
    assert checkpoint.resume_differences(saved, current) == [
        "train.batch_size: checkpoint 8, now 16",
        'base: checkpoint "small", now not set',
        "world_size: checkpoint not set, now 2",
    ]
    assert checkpoint.resume_differences(saved, saved) == []
    assert checkpoint.resume_differences({"lora": {"r": 4}}, {"lora": 4}) == ['lora: checkpoint {"r": 4}, now 4']
