"""Which n-gram order for ``build-lm``? Per-token perplexity of held-out sentences under
models of the training sentences, order by order (text only: no model, no audio).

    python benchmarks/lm_perplexity.py --data /work/artifacts/demo-corpus-mr \
        --out benchmarks/results/fusion-demo-cpu/perplexity
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from whisper_tune.config import DataConfig
from whisper_tune.processor import load_tokenizer
from whisper_tune.text_lm import build_lm, split_sentences, token_sentences


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    p.add_argument("--orders", nargs="+", type=int, default=[2, 3, 4, 5, 6, 7, 8, 10])
    p.add_argument("--held-out", nargs="+", default=["dev", "test", "unseen"])
    args = p.parse_args()
    tokenizer = load_tokenizer(None)
    data = DataConfig(source=args.data)
    train = split_sentences(data, "train")
    held = {s: token_sentences(tokenizer, split_sentences(data, s)) for s in args.held_out}
    train_words = {w for t in train for w in t.split()}
    oov = {}
    for s in args.held_out:
        words = [w for t in split_sentences(data, s) for w in t.split()]
        oov[s] = round(100 * sum(w not in train_words for w in words) / len(words), 1)
    rows = []
    for order in args.orders:
        lm = build_lm(tokenizer, train, order)
        rows.append({"order": order, **{s: round(lm.perplexity(ids), 3) for s, ids in held.items()}})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python benchmarks/lm_perplexity.py " + " ".join(sys.argv[1:]), "train_sentences": len(train)}
    out.with_suffix(".json").write_text(json.dumps({**meta, "oov_words_percent": oov, "rows": rows}, indent=1))
    lines = [
        "# Per-token perplexity of held-out sentences by n-gram order (Whisper tokens, Kneser-Ney)",
        "",
        f"Command: `{meta['command']}` ({len(train)} training sentences; words never in training: "
        + ", ".join(f"{s} {v} %" for s, v in oov.items())
        + ")",
        "",
        "| order | " + " | ".join(args.held_out) + " |",
        "|---|" + "---|" * len(args.held_out),
    ]
    lines += [f"| {r['order']} | " + " | ".join(f"{r[s]:.2f}" for s in args.held_out) + " |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
