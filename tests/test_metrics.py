import jiwer
import pytest

from whisper_tune.metrics import error_rates


def test_hand_counted_rates_equal_jiwer():
    refs = ["a b c d", "e f"]
    hyps = ["a x c", "e f g"]
    # words: b->x substituted, d deleted, g inserted: 3 edits / 6 reference words
    # chars: x for b (1), " d" deleted (2), " g" inserted (2): 5 edits / 10 reference characters
    rates = error_rates(refs, hyps)
    assert rates == pytest.approx({"wer": 50.0, "cer": 50.0})
    assert rates["wer"] == pytest.approx(100 * jiwer.wer(refs, hyps))
    assert rates["cer"] == pytest.approx(100 * jiwer.cer(refs, hyps))


def test_marathi_pair():
    ref, hyp = "मी रोज सकाळी चहा पितो", "मी रोज चहा पितो"
    assert error_rates([ref], [hyp])["wer"] == pytest.approx(20.0)  # one of five words deleted
    assert error_rates([ref], [hyp])["cer"] == pytest.approx(100 * jiwer.cer(ref, hyp))


def test_empty_hypothesis_is_all_deletions_and_empty_reference_is_refused():
    assert error_rates(["a b"], [""])["wer"] == 100.0
    with pytest.raises(ValueError, match="empty reference"):
        error_rates([" "], ["x"])
    with pytest.raises(ValueError, match="2 references but 1"):
        error_rates(["a", "b"], ["a"])
