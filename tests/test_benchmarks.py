"""`whisper-tune bench` still runs (tiny sizes, CPU); no timing is asserted."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from whisper_tune.cli import main
from whisper_tune.errors import UserError


def test_bench_train_runs_every_kind_of_row(tmp_path):
    rows = ["recipe", "int8/2/1", "int8-wo/2/0.5", "none/2/0"]
    args = ["bench", "train", "--arch", "tiny-test", "--steps", "1", "--out", str(tmp_path), "--rows", *rows]
    assert main([*args, "--work", str(tmp_path / "work")]) == 0
    result = json.loads((tmp_path / "train-tiny-test-cpu.json").read_text())
    assert [r["mode"] for r in result["rows"]] == ["recipe", "int8", "int8-wo", "none"]
    assert [r["checkpointing"] for r in result["rows"]] == [1.0, 1.0, 0.5, 0.0]
    assert result["rows"][2]["speed_vs_recipe"] > 0 and result["command"].startswith("whisper-tune bench train")
    assert "| recipe (LLM.int8" in (tmp_path / "train-tiny-test-cpu.md").read_text()


def test_bench_train_can_time_each_row_in_a_process_of_its_own(tmp_path, monkeypatch):
    """The GPU default: a row's result comes back from a fresh process, the same fields, and
    that process keeps the CLI's silencing of library chatter (logger levels, warning filters)."""
    import logging
    import warnings

    from whisper_tune.bench import bench_train, row_process

    rows = bench_train("tiny-test", ["none/2/0"], 1, tmp_path, tmp_path / "work", progress=lambda _: None, isolate=True)
    (row,) = rows["rows"]
    assert row["mode"] == "none" and row["batch"] == 2 and row["samples_per_s"] > 0 and row["loss"] == row["loss"]

    bnb = logging.getLogger("bitsandbytes")
    monkeypatch.setattr(bnb, "level", logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="whisper-tune probe")
        with row_process() as pool:
            assert pool.submit(bnb.getEffectiveLevel).result() == logging.ERROR
            assert ("ignore", "whisper-tune probe") in pool.submit(_warning_filters).result()


def _warning_filters() -> list[tuple]:
    """(action, message pattern) of each warning filter of the process this runs in."""
    import warnings

    return [(f[0], getattr(f[1], "pattern", f[1])) for f in warnings.filters]


@pytest.mark.parametrize("arch", ["tiny-test", "tiny-test-v3"])  # 80 and 128 mel bins, 51865 and 51866 tokens
def test_bench_transcribe_runs(tmp_path, arch):
    args = ["bench", "transcribe", "--arch", arch, "--clips", "3", "--new-tokens", "2", "--out", str(tmp_path)]
    assert main([*args, "--rows", "recipe", "generate/2", "fast/2"]) == 0
    rows = json.loads((tmp_path / f"transcribe-{arch}-cpu.json").read_text())["rows"]
    assert [r["engine"] for r in rows] == ["generate", "generate", "fast"]
    assert rows[0]["quantization"] == "int8" and not rows[0]["merged"]
    assert rows[1]["quantization"] == "none" and rows[1]["merged"]


def test_bench_rows_are_validated(tmp_path, capsys):
    from whisper_tune.bench import TrainRow

    args = ["bench", "transcribe", "--arch", "tiny-test", "--clips", "1", "--out", str(tmp_path)]
    assert main([*args, "--rows", "fastest/8"]) == 2
    assert "fast-compiled" in capsys.readouterr().err  # the message lists the engines

    assert TrainRow.parse("none/24/0/compile").compile
    for bad in ("int8-wo/8", "int9/8/1", "none/8/2", "none/8/0/fast"):
        with pytest.raises(UserError):
            TrainRow.parse(bad)


REALCV = Path(__file__).parents[1] / "benchmarks" / "gpu_realcv.sh"


def test_gpu_realcv_script_parses_and_needs_a_base(tmp_path):
    assert subprocess.run(["bash", "-n", str(REALCV)]).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "BASE"} | {"OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(REALCV)], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "set BASE to a local Whisper base folder" in proc.stderr
    assert not (tmp_path / "realcv").exists()  # stopped before doing anything


def test_realcv_table_counts_clips_and_speakers_of_the_slices(tmp_path, monkeypatch):
    """The table's clip and speaker counts come from the slices themselves (speakers whole)."""
    monkeypatch.syspath_prepend(str(REALCV.parent))
    from realcv_table import row

    cv = tmp_path / "cv" / "xx"
    (cv / "clips").mkdir(parents=True)
    lines = ["client_id\tpath\tsentence"] + [f"s{i % 5}\tc{i}.mp3\tw {i}" for i in range(20)]
    (cv / "validated.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    from whisper_tune.sources import open_source

    test = [r.id for r in open_source(str(cv)).rows("validated[80%:]")]
    zero = tmp_path / "res" / "xx" / "eval-zero-shot"
    zero.mkdir(parents=True)
    (zero / "summary.json").write_text(json.dumps({"normalized_wer": 50.0, "normalized_cer": 20.0}))
    (zero / "clips.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in test))
    line = row(tmp_path / "res", tmp_path / "cv", "validated[:80%]", "validated[80%:]", "xx")
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:6] == [
        "xx",
        f"{20 - len(test)} / {len(test)}",
        f"{5 - len(test) // 4} / {len(test) // 4}",
        "50.0",
        "20.0",
        "-",
    ]


LOOP = Path(__file__).parents[1] / "benchmarks" / "gpu_loop.sh"


def test_gpu_loop_script_parses_and_needs_a_corpus(tmp_path):
    assert subprocess.run(["bash", "-n", str(LOOP)]).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "CORPUS"} | {"OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(LOOP)], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "set CORPUS" in proc.stderr and not (tmp_path / "loop").exists()


def test_loop_table_pairs_each_run_with_its_bench_row(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(LOOP.parent))
    from loop_table import rows

    env = {"gpu": "X", "versions": {}}
    bench_rows = [
        {"mode": "none", "batch": 8, "checkpointing": 0.0, "samples_per_s": 200.0},
        {"mode": "none", "batch": 32, "checkpointing": 0.0, "samples_per_s": 500.0},
    ]
    (tmp_path / "bench-base").mkdir()
    bench = {"arch": "base", "rows": bench_rows, "environment": env}
    (tmp_path / "bench-base" / "train-base-gpu.json").write_text(json.dumps(bench))
    for name, batch, steady in (("after", 8, 180.0), ("before", 8, 60.0), ("after", 32, 450.0)):
        run = {"steady_samples_per_s": steady, "samples_per_s": steady / 2, "steps": 60}
        run["config"] = {"train": {"num_workers": 4}}
        (tmp_path / f"run-base-none-{batch}-0-{name}.json").write_text(json.dumps(run))
    table, environment = rows(tmp_path)
    found = {(r["row"], r["code"]): r["loop_vs_bench"] for r in table}
    assert found == {("none/8/0", "after"): 0.9, ("none/8/0", "before"): 0.3, ("none/32/0", "after"): 0.9}
    assert environment == env


def test_train_table_shows_no_ratio_where_there_is_no_recipe_row():
    """A GPU table without the recipe row has dashes, not a made-up 1.00, in its ratio columns."""
    from whisper_tune.bench import _train_table

    row = {"row": "none", "batch": 2, "checkpointing": 1.0, "samples_per_s": 3.0}
    row |= {"first_step_peak_gpu_gib": 1.0, "peak_gpu_gib": 1.0}
    with_recipe = dict(row, speed_vs_recipe=2.5, memory_vs_recipe=0.5)
    lines = _train_table({"steps": 1, "environment": {"gpu": "X"}, "rows": [row, with_recipe]})
    assert lines[-2] == "| none | 2 | 1 | 3.00 | – | 1.0 | 1.0 | – |"
    assert lines[-1] == "| none | 2 | 1 | 3.00 | 2.50 | 1.0 | 1.0 | 0.50 |"


def test_card_study_table_gives_mean_and_spread_per_setting_and_lists_failures(monkeypatch):
    """The study's table reads each row's card.json lines by name (report_card.LINES): a
    renamed line would show n/a, so the names are checked against the card's own table."""
    monkeypatch.syspath_prepend(str(LOOP.parent))
    from gpu_card_study import CARD_COLUMNS, table

    from whisper_tune.report_card import LINES

    assert {name for name, _ in CARD_COLUMNS} <= {name for _, name, *_ in LINES}

    def row(seed, wer, tuned):
        card = {"lines": [{"name": name, "base": 50.0, "tuned": tuned} for name, _ in CARD_COLUMNS]}
        scores = {"wer": wer, "cer": wer / 4}
        return {"name": "x", "seed": seed, "card": card, "test": scores, "unseen": scores}

    text = table([row(0, 30.0, 10.0), row(1, 32.0, 12.0), {"name": "y", "seed": 0, "error": "boom"}])
    lines = text.splitlines()
    assert lines[2].startswith("| base (zero-shot), card column |") and lines[2].count("50.0") == len(CARD_COLUMNS)
    assert lines[3].startswith("| x | 2 | 31.0 ± 1.4 |") and "11.0 ± 1.4" in lines[3]
    assert lines[4] == "| y (seed 0) | failed: boom |"
