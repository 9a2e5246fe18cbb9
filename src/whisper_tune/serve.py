"""A local web app (Gradio): hear a clip and read what the base model and each fine-tune
make of it, side by side (one adapter, several by name, or every run of a folder, ticked on
the page, each with its report card's headline), and look at a training run: its curves,
its before/after error rates and the clips its last evaluation got most wrong.

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
from .run import adapter_ids, adapters_in, card_headline
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
    """The base model with its adapters attached unmerged, loaded once (``open_engine`` with
    ``merge=False``; several adapters share one copy of the base, as in ``whisper-tune api``):
    the base transcript runs with the adapters switched off, each adapter's with it switched
    on, so the page holds one model however many adapters it compares. The base decodes in
    the engine's language (``--language``, else the first adapter's)."""

    def __init__(
        self,
        base: str | None,
        adapters: dict[str, str] | None,
        device: torch.device,
        language: str | None = None,
        decoding=None,
    ):
        from .inference import open_engine

        self.adapters = dict(adapters or {})  # name -> folder, in the order given
        self.engine = open_engine(
            base, device=device, language=language, merge=False, decoding=decoding, adapters=self.adapters or None
        )
        self.model, self.processor = self.engine.model, self.engine.processor
        self.base = self.engine.loaded.base
        self.language, self.task = self.engine.language, self.engine.task
        self.cards = {name: card_headline(path) for name, path in self.adapters.items()}

    def transcribe(self, audio, adapter: str | None = None) -> Transcription:
        """The transcript of the adapter named ``adapter`` (None: the base, adapters off)."""
        if adapter is None:
            with self.engine.base_only():
                t = self.engine.transcript(audio)
        else:
            t = self.engine.transcript(audio, adapter=adapter)
        return Transcription(t.text, t.language, t.seconds, t.duration)

    def compare(self, audio, chosen: list[str] | None = None) -> tuple[Transcription, dict[str, Transcription]]:
        """The base transcript of one clip and each chosen adapter's (None: every adapter), by name."""
        chosen = list(self.adapters) if chosen is None else list(chosen)
        unknown = [name for name in chosen if name not in self.adapters]
        if unknown:
            have = ", ".join(self.adapters) or "none"
            raise UserError(f"no adapter named {', '.join(unknown)}: this page has {have}")
        return self.transcribe(audio), {name: self.transcribe(audio, name) for name in chosen}

    def headline(self, name: str) -> str:
        """What the page says under an adapter's transcript: its report card's headline."""
        card = self.cards.get(name)
        return f"report card: {card}" if card else "no report card (evaluate --card writes one)"


def page_texts(comparer: Comparer, path, chosen: list[str], limits: Limits) -> tuple[str, dict[str, str]]:
    """What the compare tab shows for an upload: the base transcript and each chosen adapter's
    (the upload checked against ``limits`` first; ``UploadRejected`` says why not)."""
    audio = check_upload(path, limits)
    base, tuned = comparer.compare(audio, chosen)
    return base.describe(), {name: t.describe() for name, t in tuned.items()}


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
    """The Gradio Blocks: a compare tab (the base beside each adapter ticked, one transcript
    box per adapter, shown while ticked), and a run tab when a run folder was given."""
    import gradio as gr

    from .reporting import metrics_figure

    names = list(comparer.adapters)

    def on_transcribe(path, chosen):
        if path is None:
            raise gr.Error("upload or record a clip first")
        try:
            base, tuned = page_texts(comparer, path, chosen or [], limits)
        except (UploadRejected, UserError) as e:
            raise gr.Error(str(e)) from None
        return [base, *(gr.update(value=tuned.get(n, ""), visible=n in tuned) for n in names)]

    def on_choose(chosen):
        return [gr.update(visible=n in (chosen or [])) for n in names]

    with gr.Blocks(title="whisper-tune") as app:
        gr.Markdown(
            f"# whisper-tune\nBase: `{comparer.base}`"
            + (f" · adapters: {', '.join(f'`{n}`' for n in names)}" if names else "")
            + f" · language: {comparer.language or 'detected'} · uploads up to {limits.max_mb:g} MB "
            f"and {limits.max_seconds:g} s"
        )
        with gr.Tab("Compare"):
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio")
            choice = gr.CheckboxGroup(names, value=names[:1], label="Adapters beside the base", visible=bool(names))
            button = gr.Button("Transcribe", variant="primary")
            with gr.Row():
                base_box = gr.Textbox(label="Base model", lines=6, elem_id="base-transcript")
                boxes = [
                    gr.Textbox(
                        label=f"Fine-tuned: {name}",
                        info=comparer.headline(name),
                        lines=6,
                        visible=i == 0,
                        elem_id=f"tuned-transcript-{i}",
                    )
                    for i, name in enumerate(names)
                ]
            button.click(on_transcribe, inputs=[audio, choice], outputs=[base_box, *boxes])
            if boxes:
                choice.change(on_choose, inputs=choice, outputs=boxes)
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
    adapter: str | list[str] | None = None,
    run: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: Limits | None = None,
    language: str | None = None,
    decoding=None,
    adapters_dir: str | None = None,
) -> None:
    """Load once, build the page, and serve until interrupted; ``decoding`` is a
    ``inference.DecodingOptions`` (None: openai/whisper's defaults). ``adapter``: one folder
    or ``--adapter`` values (``NAME=PATH`` or ``PATH``); ``adapters_dir``: a folder of run
    folders (``run.adapters_in``); ``run``: one run folder, with its report tab."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local app
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web app needs Gradio: pip install 'whisper-tune[serve]'") from None
    from .modeling import pick_device

    specs = [adapter] if isinstance(adapter, str) else list(adapter or [])
    if run and (specs or adapters_dir):
        raise UserError("give --run, or --adapter/--adapters-dir, not both (a run folder names its adapter)")
    report = run_report(run) if run else None
    if report is not None:
        specs = [str(report.adapter)]
    specs += adapters_in(adapters_dir) if adapters_dir else []
    limits = limits or Limits()
    comparer = Comparer(base, adapter_ids(specs, base) if specs else None, pick_device(), language, decoding)
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
