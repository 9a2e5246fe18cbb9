"""Word and character error rates, in percent, computed offline with jiwer.

Corpus-level rates (total edits over total reference words/characters), as jiwer and
the reference recipe's ``evaluate.load("wer")`` report them, not means of per-clip rates.
"""

from __future__ import annotations

from collections.abc import Sequence


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """{"wer": ..., "cer": ...} in percent for aligned reference/hypothesis lists."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:  # a rate over no words is undefined: NaN would pass for a score
        raise ValueError("no references to score")
    if any(not r.strip() for r in references):
        raise ValueError("empty reference transcript: prepare rejects these, so the data is not prepared")
    refs, hyps = list(references), list(hypotheses)  # an empty hypothesis counts as all deletions
    return {"wer": 100.0 * jiwer.wer(refs, hyps), "cer": 100.0 * jiwer.cer(refs, hyps)}
