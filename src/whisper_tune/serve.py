"""A local web app (Gradio): hear a clip and read what the base model and the fine-tuned
model make of it, side by side, and look at a training run: its curves, its before/after
error rates and the clips its last evaluation got most wrong.

Safe by default: it binds to 127.0.0.1, refuses uploads over a size or duration limit with
a message that says so, takes no server path from the browser (audio comes in as an upload
or a recording, the run folder is fixed on the command line), loads the model once per
process, and queues requests one at a time so that concurrent users wait instead of running
the GPU out of memory.

The functions below (``Comparer``, ``run_report``) and ``uploads.check_upload`` work without
Gradio; ``build_app`` puts them on a page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError
from .uploads import Limits, UploadRejected, check_upload

WORST_CLIPS = 5  # clips of the last evaluation shown with their audio


@dataclass
class Transcription:
    text: str
    language: str
    seconds: float  # processing time
    audio_seconds: float

    def describe(self) -> str:
        return f"[{self.language} · {self.seconds:.2f} s for {self.audio_seconds:.1f} s of audio]\n{self.text}"


class Comparer:
    """The base model with the adapter attached but unmerged, loaded once: the base
    transcript runs with the adapter switched off, so both share one copy of the weights."""

    def __init__(
        self, base: str | None, adapter: str | None, device: torch.device, language: str | None = None, decoding=None
    ):
        from .inference import open_engine

        self.engine = open_engine(base, adapter, device=device, language=language, merge=False, decoding=decoding)
        self.model, self.processor = self.engine.model, self.engine.processor
        self.base, self.adapter = self.engine.loaded.base, adapter
        self.language, self.task = self.engine.language, self.engine.task

    def transcribe(self, audio, fine_tuned: bool) -> Transcription:
        from contextlib import nullcontext

        switch = nullcontext() if fine_tuned or not self.adapter else self.engine.base_only()
        with switch:
            t = self.engine.transcript(audio)
        return Transcription(t.text, t.language, t.seconds, t.duration)

    def compare(self, audio) -> tuple[Transcription, Transcription | None]:
        """(base, fine-tuned) transcripts of one clip; fine-tuned is None without an adapter."""
        base = self.transcribe(audio, fine_tuned=False)
        return base, (self.transcribe(audio, fine_tuned=True) if self.adapter else None)


# ---- a training run ------------------------------------------------------------------


@dataclass
class RunReport:
    run_dir: Path
    adapter: Path | None
    records: list[dict] = field(default_factory=list)  # metrics.jsonl
    scores: list[dict] = field(default_factory=list)  # one row per evaluation report found
    worst: list[dict] = field(default_factory=list)  # clips.jsonl rows of the last evaluation, worst first
    card: str | None = None  # the run's report card (card.md), where training or evaluate --card wrote one

    def scores_markdown(self) -> str:
        if not self.scores:
            return "No evaluation report found (run `whisper-tune evaluate --adapter RUN/best ...`)."
        lines = ["| model | WER % | CER % | normalized WER % | clips | report |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {s['label']} | {s['wer']:.1f} | {s['cer']:.1f} | {s['normalized_wer']:.1f} | {s['n']} | {s['report']} |"
            for s in self.scores
        ]
        return "\n".join(lines)


def run_report(run_dir: str | Path, worst: int = WORST_CLIPS) -> RunReport:
    """What a run folder says about itself: metrics, and the evaluation reports written in it
    or beside it (``evaluate --adapter RUN/best`` writes into the run folder; the demo writes
    ``eval-before``/``eval-after`` beside it). Zero-shot reports count as "before"."""
    from .reporting import read_metrics
    from .run import RunDir, read_eval_clips

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise UserError(f"run folder {run.path} not found")
    report = RunReport(run.path, run.serving_adapter(), read_metrics(run.path))
    card = next((f / "card.md" for f in (run.path, report.adapter) if (f / "card.md").is_file()), None)
    report.card = card.read_text(encoding="utf-8") if card else None
    last = None
    for folder, summary in run.eval_reports():
        adapter = (summary.get("model") or {}).get("adapter")
        label = f"fine-tuned ({Path(adapter).name})" if adapter else "base (zero-shot)"
        report.scores.append(summary | {"label": label, "report": folder.name})
        if adapter:
            last = folder
    if last is not None:
        report.worst = read_eval_clips(last)[:worst]
        audio = _clip_audio(last / "prepared", [r["id"] for r in report.worst])
        for row in report.worst:
            row["audio"] = audio.get(row["id"])
    return report


def _clip_audio(prepared: Path, ids: list[str]) -> dict:
    """16 kHz audio of the named clips from an evaluation's prepared cache (empty if gone)."""
    from .prepare import load_prepared

    try:
        data = load_prepared(prepared)
    except Exception:  # noqa: BLE001 - a report whose cache was deleted still shows its texts
        return {}
    wanted = set(ids)
    index = [i for i, clip_id in enumerate(data["id"]) if clip_id in wanted]
    rows = data.select(index).with_format("numpy")
    return {row["id"]: row["audio"] for row in rows}


# ---- the page ------------------------------------------------------------------------


def build_app(comparer: Comparer, limits: Limits, report: RunReport | None = None):
    """The Gradio Blocks: a compare tab, and a run tab when a run folder was given."""
    import gradio as gr

    from .reporting import metrics_figure

    tuned_name = Path(comparer.adapter).name if comparer.adapter else None

    def on_transcribe(path):
        try:
            audio = check_upload(path, limits)
        except UploadRejected as e:
            raise gr.Error(str(e)) from None
        base, tuned = comparer.compare(audio)
        return base.describe(), tuned.describe() if tuned else "(no adapter given: --adapter or --run)"

    with gr.Blocks(title="whisper-tune") as app:
        gr.Markdown(
            f"# whisper-tune\nBase: `{comparer.base}`"
            + (f" · fine-tuned: `{comparer.adapter}`" if comparer.adapter else "")
            + f" · language: {comparer.language or 'detected'} · uploads up to {limits.max_mb:g} MB "
            f"and {limits.max_seconds:g} s"
        )
        with gr.Tab("Compare"):
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio")
            button = gr.Button("Transcribe", variant="primary")
            with gr.Row():
                base_box = gr.Textbox(label="Base model", lines=6, elem_id="base-transcript")
                tuned_box = gr.Textbox(
                    label=f"Fine-tuned ({tuned_name})" if tuned_name else "Fine-tuned",
                    lines=6,
                    elem_id="tuned-transcript",
                )
            button.click(on_transcribe, inputs=audio, outputs=[base_box, tuned_box])
        if report is not None:
            with gr.Tab("Training run"):
                gr.Markdown(f"Run folder: `{report.run_dir}`")
                figure = metrics_figure(report.records, report.run_dir.name)
                if figure is not None:
                    gr.Plot(figure, label="Loss and error rates")
                gr.Markdown(report.scores_markdown())
                if report.card:
                    gr.Markdown(report.card.replace("# Report card", "### Report card", 1), elem_id="report-card")
                if report.worst:
                    gr.Markdown(f"### The {len(report.worst)} clips the last evaluation got most wrong")
                for clip in report.worst:
                    with gr.Row():
                        if clip.get("audio") is not None:
                            gr.Audio(value=(16000, clip["audio"]), label=clip["id"], interactive=False)
                        gr.Markdown(
                            f"**{clip['id']}** · WER {clip.get('wer', 0):.0f} % · {', '.join(clip.get('flags', []))}"
                            f"\n\nreference: {clip['reference']}\n\nhypothesis: {clip['hypothesis']}"
                        )
    return app.queue(default_concurrency_limit=1, max_size=32)


def serve(
    base: str | None,
    adapter: str | None = None,
    run: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: Limits | None = None,
    language: str | None = None,
    decoding=None,
) -> None:
    """Load once, build the page, and serve until interrupted; ``decoding`` is a
    ``inference.DecodingOptions`` (None: openai/whisper's defaults)."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local app
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web app needs Gradio: pip install 'whisper-tune[serve]'") from None
    from .modeling import pick_device

    if run and adapter:
        raise UserError("give --adapter or --run, not both (a run folder names its adapter)")
    report = run_report(run) if run else None
    if report is not None:
        adapter = str(report.adapter)
    limits = limits or Limits()
    comparer = Comparer(base, adapter, pick_device(), language, decoding)
    app = build_app(comparer, limits, report)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"whisper-tune: serving on {host}: anyone who can reach this address can use the app")
    app.launch(
        server_name=host,
        server_port=port,
        max_file_size=f"{limits.max_mb:g}mb",
        share=False,
        show_error=True,
        allowed_paths=[],
    )
