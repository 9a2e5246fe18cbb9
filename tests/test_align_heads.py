"""Alignment heads chosen again on held-out clips: the corpus's clips are spoken again as
they were made, the choice errs no more than the best single head, and the adapter folder
keeps it for word timestamps."""

from __future__ import annotations

import csv

from whisper_tune.align_heads import all_heads, choose_heads, reference_clips, start_errors, write_heads
from whisper_tune.inference.words import alignment_heads


def test_the_plan_names_every_clip_of_the_corpus(small_corpus):
    from whisper_tune.demo_data import clip_plan

    plan = {r["path"]: r for r in clip_plan(small_corpus)}
    for split in ("dev", "test", "unseen"):
        with open(small_corpus / f"{split}.tsv", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                assert plan[row["path"]]["sentence"] == row["sentence"] and plan[row["path"]]["split"] == split


def test_chosen_heads_err_no_more_than_the_best_head_and_are_kept(small_corpus, tiny_model, processor, tmp_path):
    clips = reference_clips(small_corpus, "train", 4)
    choice = choose_heads(tiny_model, processor, clips, "mr", split="train")
    every = all_heads(tiny_model)
    assert set(choice.alignment_heads) <= set(every) and choice.clips >= 1 and choice.words >= 1
    import numpy as np

    from whisper_tune.align_heads import aligned_clips

    aligned = aligned_clips(tiny_model, processor, clips, "mr")
    best_single = min(float(np.median(start_errors(aligned, [i]))) for i in range(len(every)))
    assert choice.median_error_s <= round(best_single, 4)
    assert choice.previous_heads == alignment_heads(tiny_model)
    write_heads(choice, tmp_path)
    assert alignment_heads(tiny_model, tmp_path) == choice.alignment_heads
