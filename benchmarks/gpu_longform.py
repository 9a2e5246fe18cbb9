"""Long-form throughput: whisper-tune's batched engine against transformers' chunked pipeline.

    python benchmarks/longform_audio.py --out /tmp/longform-audio            # ~1 h, 12 files
    python benchmarks/gpu_longform.py --model /tmp/d200/whisper-base --audio /tmp/longform-audio \\
        --pipeline-batch 8 16 32 64 --batch-size 16 32 64 --out benchmarks/results/longform-base-gpu

In one run, on the same model (``--model``: a transformers folder; ``random:SIZE`` builds
random weights of that size, for checking the script only) and the same audio held in
memory (the files of ``longform_audio.py``):

* transformers' ``pipeline("automatic-speech-recognition", chunk_length_s=30,
  batch_size=B, return_timestamps=True)`` at each ``--pipeline-batch`` (its best is the
  baseline), greedy;
* ``longform.transcribe_batched`` at each ``--batch-size``, with ``transcribe``'s default
  decoding (``--decoding robust``: thresholds and temperature fallback, not conditioned on
  previous text) or plain greedy.

Each engine and batch size first decodes one file to warm up (CUDA graphs, cuBLAS); the
timed run covers features, decoding and stitching of every file (audio decoding from disk
is outside, for both). Reports seconds, real-time factor (audio seconds / wall seconds)
and WER/CER against the references (``normalizers.normalize`` on both sides), as JSON and
a markdown table in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from whisper_tune.audio import SAMPLE_RATE, load_audio
from whisper_tune.inference.longform import transcribe_batched
from whisper_tune.inference.options import DecodingOptions
from whisper_tune.metrics import error_rates
from whisper_tune.normalizers import normalize
from whisper_tune.reporting import environment


def load_model(spec: str, device: torch.device, dtype: torch.dtype):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_tune.modeling import architecture_config, set_generation_language
    from whisper_tune.processor import offline_processor_dir

    if spec.startswith("random:"):
        torch.manual_seed(0)
        model = WhisperForConditionalGeneration(architecture_config(spec.split(":", 1)[1]))
        processor = WhisperProcessor.from_pretrained(offline_processor_dir(model.config.num_mel_bins))
        set_generation_language(model, processor.tokenizer, None, "transcribe")
    else:
        model = WhisperForConditionalGeneration.from_pretrained(spec)
        processor = WhisperProcessor.from_pretrained(spec)
    return model.to(device, dtype).eval(), processor


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pipeline(model, processor, audios, language, batch, device, dtype, max_new_tokens):
    from transformers import pipeline

    if processor.tokenizer.pad_token is None:  # the pipeline pads a batch of chunks' prompts
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    pipe = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        chunk_length_s=30,
        batch_size=batch,
        device=device,
        dtype=dtype,
    )
    kwargs = {"language": language, "task": "transcribe", "max_new_tokens": max_new_tokens}
    inputs = [{"raw": a, "sampling_rate": SAMPLE_RATE} for a in audios]
    return [o["text"].strip() for o in pipe(inputs, batch_size=batch, return_timestamps=True, generate_kwargs=kwargs)]


def run_ours(model, processor, audios, language, batch, decoding, max_new_tokens):
    out = transcribe_batched(
        model, processor, audios, language, batch_size=batch, decoding=decoding, max_new_tokens=max_new_tokens
    )
    return [" ".join(s.text for s in segments).strip() for segments, _ in out]


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    texts = fn()
    sync(device)
    return texts, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="transformers folder, or random:SIZE")
    parser.add_argument("--audio", required=True, help="folder written by longform_audio.py")
    parser.add_argument("--language", default="en")
    parser.add_argument("--pipeline-batch", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--decoding", choices=("robust", "greedy"), default="robust")
    parser.add_argument("--files", type=int, default=None, help="only the first N files")
    parser.add_argument("--max-new-tokens", type=int, default=224, help="per 30 s window, both engines")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    manifest = json.loads((Path(args.audio) / "manifest.json").read_text(encoding="utf-8"))["files"][: args.files]
    audios = [load_audio(Path(args.audio) / m["file"]) for m in manifest]
    references = [normalize(m["text"]) for m in manifest]
    seconds_audio = sum(len(a) for a in audios) / SAMPLE_RATE
    model, processor = load_model(args.model, device, dtype)
    decoding = (
        DecodingOptions(condition_on_previous_text=False) if args.decoding == "robust" else DecodingOptions.greedy()
    )
    print(f"{len(audios)} files, {seconds_audio / 60:.1f} min of audio, {device}, {dtype}", flush=True)
    runs = [(f"transformers pipeline (chunk 30 s, greedy), batch {b}", b, "pipeline") for b in args.pipeline_batch]
    runs += [(f"whisper-tune batched ({args.decoding}), batch {b}", b, "ours") for b in args.batch_size]
    rows = []
    with torch.inference_mode():
        for name, batch, kind in runs:
            if kind == "pipeline":

                def fn(audios=audios, batch=batch):
                    return run_pipeline(
                        model, processor, audios, args.language, batch, device, dtype, args.max_new_tokens
                    )
            else:

                def fn(audios=audios, batch=batch):
                    return run_ours(model, processor, audios, args.language, batch, decoding, args.max_new_tokens)

            fn(audios[:1])  # warm-up: one file (graphs for this batch size, cuBLAS, allocator)
            texts, seconds = timed(fn, device)
            hyps = [normalize(t) for t in texts]
            row = {"engine": name, "kind": kind, "batch": batch, "seconds": seconds}
            row["realtime_factor"] = seconds_audio / seconds
            row |= error_rates(references, hyps)
            if device.type == "cuda":
                row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
            row["texts"] = texts
            rows.append(row)
            print(
                f"{name}: {seconds:.1f} s, {row['realtime_factor']:.0f}x real time, "
                f"WER {row['wer']:.2f} CER {row['cer']:.2f}",
                flush=True,
            )
    best_pipe = min((r for r in rows if r["kind"] == "pipeline"), key=lambda r: r["seconds"])
    best_ours = min((r for r in rows if r["kind"] == "ours"), key=lambda r: r["seconds"])
    speedup = best_pipe["seconds"] / best_ours["seconds"]
    print(
        f"best whisper-tune / best pipeline throughput: {speedup:.2f}x "
        f"(WER {best_ours['wer']:.2f} vs {best_pipe['wer']:.2f})"
    )
    env = environment(device)
    result = {
        "command": "python " + " ".join(sys.argv),
        "model": args.model,
        "files": len(audios),
        "audio_seconds": seconds_audio,
        "device": env.get("gpu") or env.get("cpu") or str(device),
        "dtype": str(dtype),
        "speedup_best_vs_best": speedup,
        "rows": rows,
        "environment": env,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "longform.json").write_text(json.dumps(result, indent=1, default=str))
    lines = [
        f"# Long-form transcription, {len(audios)} files ({seconds_audio / 60:.1f} min of speech-like audio), "
        f"{device.type} {dtype}",
        "",
        f"`{result['command']}`",
        "",
        f"torch {env['versions']['torch']}, transformers {env['versions']['transformers']}; model {args.model}; "
        "audio in memory; WER/CER (%) against the spoken text, normalized",
        "",
        "| engine | seconds | x real time | WER | CER | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['engine']} | {r['seconds']:.1f} | {r['realtime_factor']:.0f} | {r['wer']:.2f} | {r['cer']:.2f} | "
        f"{r.get('peak_gib', float('nan')):.1f} |"
        for r in rows
    ]
    lines += ["", f"Best whisper-tune batch against the pipeline's best batch: **{speedup:.2f}x** the throughput."]
    (out / "longform.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
