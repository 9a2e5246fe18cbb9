"""The table of benchmarks/gpu_realcv.sh: per language, clips and speakers of the train and
held-out slices, zero-shot and fine-tuned WER/CER on the held-out clips, training samples/s.

    python benchmarks/realcv_table.py OUT/realcv CV_FOLDER TRAIN_SPLIT TEST_SPLIT LANG...

Speakers are counted from the Common Voice rows (client_id) of the clips each figure
rests on, so a figure says how many voices it stands for, not only how many clips.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from whisper_tune.sources import open_source


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _rates(summary: dict | None) -> str:
    if summary is None:
        return "- | -"
    return f"{summary['normalized_wer']:.1f} | {summary['normalized_cer']:.1f}"


def row(results: Path, cv: Path, train_split: str, test_split: str, lang: str) -> str:
    """One markdown row for ``lang``."""
    source = open_source(str(cv / lang), language=lang)
    speaker = {r.id: r.speaker for r in source.rows(f"{train_split}+{test_split}")}
    zero = _read(results / lang / "eval-zero-shot" / "summary.json")
    tuned = _read(results / lang / "eval-fine-tuned" / "summary.json")
    run = _read(results / lang / "run.json") or {}
    clips = results / lang / "eval-zero-shot" / "clips.jsonl"
    tested = (
        [json.loads(line)["id"] for line in clips.read_text(encoding="utf-8").splitlines()] if clips.is_file() else []
    )
    trained = [r.id for r in source.rows(train_split)]
    prepared = (_read(results / lang / "prepared-train.json") or {}).get("prepared", len(trained))  # less rejections
    return (
        f"| {lang} | {prepared} / {len(tested)} | {len({speaker[i] for i in trained})} / "
        f"{len({speaker.get(i) for i in tested})} | {_rates(zero)} | {_rates(tuned)} | "
        f"{run.get('steps', '-')} | {run.get('samples_per_s', 0):.2f} |"
    )


def main(argv: list[str]) -> None:
    results, cv, train_split, test_split, *langs = argv
    print(f"Train `{train_split}`, held out `{test_split}` (whole speakers); normalized WER/CER %.\n")
    print(
        "| language | clips train / test | speakers train / test | zero-shot WER | zero-shot CER "
        "| fine-tuned WER | fine-tuned CER | steps | samples/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for lang in langs:
        print(row(Path(results), Path(cv), train_split, test_split, lang))


if __name__ == "__main__":
    main(sys.argv[1:])
