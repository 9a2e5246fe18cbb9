"""How well word time stamps land, before and after fine-tuning: the median word-start error
against espeak-ng's own word timing (``speech_timing.py``), for the base, the fine-tune with
the base's alignment heads, and the fine-tune with heads chosen again (``align_heads.py``).

    python benchmarks/word_timing.py --corpus /work/artifacts/demo-corpus-mr \
        --adapter /work/artifacts/gpu-demo-adapter --out benchmarks/results/vad-words-cpu

Each held-out clip of the demo corpus is spoken again with its voice, speed and pitch, with
word events; its reference text is aligned to the audio by cross-attention DTW (forced
alignment: recognition errors do not enter) and each word's start compared with espeak-ng's
(each clip's first word left out: both put it at 0 s). Heads are chosen on ``--choose-on``
(dev) and measured on ``--split`` (unseen: new sentences, new voices). Writes
``word_timing.json`` and prints one line per row.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np


def row(name: str, aligned, every, heads) -> dict:
    from whisper_tune.align_heads import start_errors

    errors = start_errors(aligned, [every.index(tuple(h)) for h in heads])
    out = {
        "model": name,
        "heads": [list(h) for h in heads],
        "words": int(errors.size),
        "median_ms": round(1000 * float(np.median(errors)), 1),
        "mean_ms": round(1000 * float(np.mean(errors)), 1),
        "p90_ms": round(1000 * float(np.percentile(errors, 90)), 1),
        "within_50ms": round(100 * float(np.mean(errors <= 0.05)), 1),
    }
    print(
        f"{name:32s} {len(heads):2d} heads: median {out['median_ms']:5.1f} ms, mean {out['mean_ms']:5.1f}, "
        f"p90 {out['p90_ms']:5.1f}, {out['within_50ms']:.0f} % within 50 ms ({out['words']} words)",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a demo corpus folder")
    parser.add_argument("--split", default="unseen", help="where the error is measured")
    parser.add_argument("--choose-on", default="dev", help="where a fine-tune's heads are chosen")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--base", default="/work/artifacts/whisper-base")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--language", default="mr")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    import transformers

    from whisper_tune.align_heads import aligned_clips, all_heads, choose_heads, reference_clips
    from whisper_tune.inference import open_engine
    from whisper_tune.inference.words import alignment_heads

    measured = reference_clips(args.corpus, args.split, args.clips)
    chooser = reference_clips(args.corpus, args.choose_on, args.clips)
    rows = []
    for name, adapter in (("base", None), ("fine-tune", args.adapter)):
        if name == "fine-tune" and not adapter:
            continue
        engine = open_engine(args.base, adapter, language=args.language, device=torch.device("cpu"))
        every = all_heads(engine.model)
        aligned = aligned_clips(engine.model, engine.processor, measured, args.language)
        base_heads = alignment_heads(engine.model)  # the generation config's: the base's heads
        rows.append(row(f"{name}, base heads", aligned, every, base_heads))
        choice = choose_heads(engine.model, engine.processor, chooser, args.language, split=args.choose_on)
        rows.append(row(f"{name}, heads chosen on {args.choose_on}", aligned, every, choice.alignment_heads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python benchmarks/word_timing.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "rows": rows,
    }
    (out / "word_timing.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
