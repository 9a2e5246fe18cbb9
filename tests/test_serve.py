"""The web app: its functions directly, and one browser test (headless Debian Chromium)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port, write_tone

from whisper_tune.run import adapter_ids, adapters_in
from whisper_tune.serve import Comparer, run_report
from whisper_tune.uploads import Limits, check_upload

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("WHISPER_TUNE_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture(scope="module")
def comparer(tiny_adapter):
    return Comparer(None, {"mr-run": str(tiny_adapter)}, torch.device("cpu"))


def test_one_model_serves_base_and_fine_tuned(comparer, tmp_path):
    assert comparer.base and comparer.language == "mr"
    n_params = sum(p.numel() for p in comparer.model.parameters())
    audio = check_upload(write_tone(tmp_path / "tone.wav", seconds=2.0), Limits())
    base, tuned = comparer.compare(audio)
    assert list(tuned) == ["mr-run"]
    tuned = tuned["mr-run"]
    assert base.language == tuned.language == "mr" and base.audio_seconds == pytest.approx(2.0)
    assert base.describe().startswith("[mr · ") and base.seconds > 0
    assert sum(p.numel() for p in comparer.model.parameters()) == n_params  # nothing loaded per request
    # the adapter really is switched off for the base transcript
    features = torch.randn(1, 80, 3000)
    start = torch.tensor([[50258, 50337, 50359, 50363]])
    with torch.inference_mode():
        on = comparer.model(input_features=features, decoder_input_ids=start).logits
        with comparer.model.disable_adapter():
            off = comparer.model(input_features=features, decoder_input_ids=start).logits
    assert not torch.allclose(on, off, atol=1e-3)


@pytest.fixture(scope="module")
def run_folder(tiny_adapter, small_corpus, tmp_path_factory):
    """A run folder as training and evaluate leave it: adapter, metrics, a zero-shot report
    beside it and the adapter's report inside it."""
    from whisper_tune.config import DataConfig
    from whisper_tune.evaluation import evaluate

    root = tmp_path_factory.mktemp("served")
    run = root / "run"
    shutil.copytree(tiny_adapter, run / "adapter")
    records = [{"step": s, "train_loss": 5.0 - s / 10} for s in range(1, 11)]
    records += [{"step": 5, "eval_wer": 90.0, "eval_cer": 60.0}, {"step": 10, "eval_wer": 70.0, "eval_cer": 40.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data = DataConfig(source=str(small_corpus), language="mr")
    base = json.loads((tiny_adapter / "whisper_tune.json").read_text())["base"]
    evaluate(base, None, data, "train", root / "eval-before", max_new_tokens=8, max_samples=6, progress=False)
    evaluate(
        None, str(run / "adapter"), data, "train", run / "eval-adapter", max_new_tokens=8, max_samples=6, progress=False
    )
    return run


def test_run_report_finds_curves_scores_and_worst_clips(run_folder):
    report = run_report(run_folder, worst=3)
    assert report.adapter == run_folder / "adapter" and len(report.records) == 12
    assert [s["label"] for s in report.scores] == ["base (zero-shot)", "fine-tuned (adapter)"]
    assert "| base (zero-shot) |" in report.scores_markdown()
    assert len(report.worst) == 3
    wers = [c["wer"] for c in report.worst]
    assert wers == sorted(wers, reverse=True)  # worst first
    for clip in report.worst:
        assert isinstance(clip["audio"], np.ndarray) and clip["audio"].size > 16000 * 0.5
        assert clip["reference"]


def test_run_report_errors(tmp_path):
    from whisper_tune.errors import UserError

    with pytest.raises(UserError, match="not found"):
        run_report(tmp_path / "missing")
    with pytest.raises(UserError, match="holds no adapter"):
        run_report(tmp_path)


def test_app_builds_with_a_queue(comparer, run_folder):
    pytest.importorskip("gradio")
    from whisper_tune.serve import build_app

    app = build_app(comparer, Limits(), run_report(run_folder))
    assert app.title == "whisper-tune"
    assert app._queue is not None  # requests wait their turn: one transcription at a time


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def test_browser_uploads_a_clip_and_sees_both_transcripts(run_folder, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; scripts/setup.sh does it)")
    pytest.importorskip("gradio")
    sync_api = pytest.importorskip("playwright.sync_api")
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "whisper_tune.cli", "serve", "--run", str(run_folder), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, proc)
        clip = write_tone(tmp_path / "clip.wav", seconds=2.0)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("input[type=file]").first.set_input_files(str(clip))
            page.locator("audio, .waveform-container, [data-testid=waveform-Audio]").first.wait_for(timeout=30000)
            page.get_by_role("button", name="Transcribe").click()
            expect = sync_api.expect
            expect(page.locator("#base-transcript textarea")).to_have_value(re.compile(r"^\[mr · "), timeout=90000)
            expect(page.locator("#tuned-transcript-0 textarea")).to_have_value(re.compile(r"^\[mr · "), timeout=90000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-compare.png"), full_page=True)
            page.get_by_role("tab", name="Training run").click()
            expect(page.get_by_text("base (zero-shot)")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "serve-run.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert (ARTIFACTS / "serve-compare.png").stat().st_size > 10_000


# ---- the adapters of a folder of runs, side by side (issue 27) -------------------------


@pytest.fixture(scope="module")
def runs_folder(tiny_adapter, other_adapter, tmp_path_factory) -> Path:
    """A folder as training leaves several runs in it: ``mr`` (adapter/ only), ``hi`` (best/,
    with a report card), an evaluation report beside them, and an adapter folder on its own."""
    root = tmp_path_factory.mktemp("runs")
    shutil.copytree(tiny_adapter, root / "mr" / "adapter")
    shutil.copytree(other_adapter, root / "hi" / "best")
    (root / "hi" / "adapter").mkdir()  # an unfinished final adapter: best/ is served
    (root / "eval-before").mkdir()
    (root / "eval-before" / "summary.json").write_text("{}")
    shutil.copytree(tiny_adapter, root / "plain")
    return root


def test_adapters_in_names_each_run_of_a_folder(runs_folder, tmp_path):
    from whisper_tune.errors import UserError
    from whisper_tune.run import card_headline

    specs = adapters_in(runs_folder)
    assert specs == [
        f"hi={runs_folder / 'hi' / 'best'}",
        f"mr={runs_folder / 'mr' / 'adapter'}",
        f"plain={runs_folder / 'plain'}",
    ]
    assert list(adapter_ids(specs)) == ["hi", "mr", "plain"]
    assert card_headline(runs_folder / "hi" / "best") == "better on held-out clips; same on non-speech"
    assert card_headline(runs_folder / "mr" / "adapter") is None
    with pytest.raises(UserError, match="holds no run folder"):
        adapters_in(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        adapters_in(tmp_path / "missing")


def test_the_page_shows_the_base_beside_each_ticked_adapter(runs_folder, tmp_path):
    """The compare tab's own handler, called as Gradio calls it: the base transcript and the
    ticked adapters' (each as that adapter alone gives it), on one copy of the base."""
    pytest.importorskip("gradio")
    from whisper_tune.inference import DecodingOptions, open_engine
    from whisper_tune.serve import build_app

    greedy = DecodingOptions.greedy()  # the random model would run every fallback temperature
    adapters = adapter_ids(adapters_in(runs_folder)[:2])  # hi, mr
    comparer = Comparer(None, adapters, torch.device("cpu"), decoding=greedy)
    assert comparer.engine.peft_names == {"hi": "default", "mr": "adapter1"}  # one base, two adapters
    app = build_app(comparer, Limits())
    (transcribe,) = [f.fn for f in app.fns.values() if f.name == "on_transcribe"]
    clip = write_tone(tmp_path / "tone.wav", seconds=2.0)
    audio = check_upload(clip, Limits())

    def alone(adapter):
        engine = open_engine(None, adapter, device=torch.device("cpu"), merge=False, decoding=greedy)
        with engine.base_only():
            base_text = engine.transcript(audio).text
        return base_text, engine.transcript(audio).text

    (base_hi, hi), (_, mr) = alone(adapters["hi"]), alone(adapters["mr"])
    assert hi != mr  # the two adapters say different things
    base, hi_box, mr_box = transcribe(str(clip), ["mr"])
    assert base.split("\n", 1)[1] == base_hi
    assert mr_box["visible"] and mr_box["value"].split("\n", 1)[1] == mr
    assert not hi_box["visible"] and hi_box["value"] == ""  # not ticked: hidden
    base, hi_box, mr_box = transcribe(str(clip), ["hi", "mr"])
    assert (hi_box["value"].split("\n", 1)[1], mr_box["value"].split("\n", 1)[1]) == (hi, mr)
    assert hi_box["value"].startswith("[hi · ") and base.startswith("[hi · ")  # the first adapter's language
    assert comparer.headline("hi") == "report card: better on held-out clips; same on non-speech"
    assert comparer.headline("mr").startswith("no report card")
