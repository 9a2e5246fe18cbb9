"""The batched long-form engine alone on the CPU: seconds and WER/CER on the hour of
``longform_audio.py`` (the accuracy re-check of the engine when no GPU is at hand; the
pipeline takes about an hour of CPU for the same audio, so it is left to gpu_longform.py).

    PYTHONPATH=src python benchmarks/cpu_longform.py --model /tmp/d200/whisper-base \\
        --audio /tmp/longform-audio --threads 2 --batch-size 16 --out result.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from gpu_longform import load_model, run_ours

from whisper_tune.audio import SAMPLE_RATE, load_audio
from whisper_tune.inference.options import DecodingOptions
from whisper_tune.metrics import error_rates
from whisper_tune.normalizers import normalize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--audio", required=True, help="folder written by longform_audio.py")
    parser.add_argument("--language", default="en")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    manifest = json.loads((Path(args.audio) / "manifest.json").read_text(encoding="utf-8"))["files"]
    audios = [load_audio(Path(args.audio) / m["file"]) for m in manifest]
    references = [normalize(m["text"]) for m in manifest]
    model, processor = load_model(args.model, torch.device("cpu"), torch.float32)
    decoding = DecodingOptions(condition_on_previous_text=False)  # transcribe's default
    start = time.perf_counter()
    with torch.inference_mode():
        texts = run_ours(model, processor, audios, args.language, args.batch_size, decoding, 224)
    seconds = time.perf_counter() - start
    hypotheses = [normalize(t) for t in texts]
    audio_s = sum(len(a) for a in audios) / SAMPLE_RATE
    result = {
        "command": "python benchmarks/cpu_longform.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "seconds": seconds,
        "audio_seconds": audio_s,
        "realtime_factor": audio_s / seconds,
        **error_rates(references, hypotheses),
        "words": [len(h.split()) for h in hypotheses],
        "reference_words": [len(r.split()) for r in references],
        "texts": texts,
    }
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "texts"}))


if __name__ == "__main__":
    main()
