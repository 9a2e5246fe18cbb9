"""The optimizer step's loss: transformers' own loss unless label smoothing is asked for,
then cross-entropy over the same positions with the targets smoothed."""

import pytest
import torch

from whisper_tune.config import load_train_config
from whisper_tune.optimization import OptimizerStep


def _batch(vocab: int = 51865):
    torch.manual_seed(0)
    labels = torch.randint(0, 1000, (2, 6))
    labels[1, 4:] = -100  # padding
    return {"input_features": torch.randn(2, 80, 3000), "labels": labels}


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(tiny_model_dir).eval()


def test_without_smoothing_the_loss_is_transformers_own(model):
    batch = _batch()
    step = OptimizerStep(model, torch.optim.SGD(model.parameters(), lr=0.0), None, 1.0)
    with torch.no_grad():
        assert torch.equal(step._loss(batch), model(**batch, use_cache=False).loss)


def test_smoothing_is_cross_entropy_with_smoothed_targets_over_the_labelled_positions(model):
    batch = _batch()
    step = OptimizerStep(model, torch.optim.SGD(model.parameters(), lr=0.0), None, 1.0, label_smoothing=0.1)
    with torch.no_grad():
        smoothed = step._loss(batch)
        logits = model(**batch, use_cache=False).logits.float()
    keep = batch["labels"] != -100
    logp = torch.log_softmax(logits[keep], dim=-1)
    target = batch["labels"][keep]
    expected = (0.9 * -logp.gather(1, target[:, None]).squeeze(1) + 0.1 * -logp.mean(dim=1)).mean()
    torch.testing.assert_close(smoothed, expected, rtol=1e-5, atol=1e-5)
    assert not torch.isclose(smoothed, model(**batch, use_cache=False).loss)


def test_label_smoothing_and_averaging_settings_are_validated(tmp_path):
    for bad, words in (
        ({"train.label_smoothing": "1.0"}, "label_smoothing"),
        ({"train.average_last": "1"}, "average_last"),
        ({"train.average_last": "4", "train.keep_last": "2"}, "keep_last to at least 4"),
    ):
        with pytest.raises(Exception, match=words):
            load_train_config("demo", [f"{k}={v}" for k, v in bad.items()])
    cfg = load_train_config("demo", ["train.average_last=3", "train.keep_last=3", "train.label_smoothing=0.1"])
    assert cfg.train.average_last == 3 and cfg.train.label_smoothing == 0.1
