import numpy as np
import torch
from conftest import tone

from whisper_tune.features import IGNORE_INDEX, LABEL_MULTIPLE, SpeechCollator, label_ids, log_mel, set_prefix


def test_labels_carry_prefix_and_end(tokenizer):
    set_prefix(tokenizer, "mr")
    ids = label_ids(tokenizer, "मराठी माझी मातृभाषा आहे.")
    assert ids[:4] == [50258, 50320, 50359, 50363] and ids[-1] == 50257
    assert tokenizer.decode(ids, skip_special_tokens=True) == "मराठी माझी मातृभाषा आहे."
    set_prefix(tokenizer, "hi", task="translate")
    assert label_ids(tokenizer, "x")[:3] == [50258, 50276, 50358]


def _examples(tokenizer, lengths=(1.0, 2.5), texts=("आज हवा छान आहे.", "हो")):
    set_prefix(tokenizer, "mr")
    return [{"audio": tone(s, 16000), "labels": label_ids(tokenizer, t)} for s, t in zip(lengths, texts)]


def test_collator_pads_masks_and_drops_start(processor, tokenizer):
    examples = _examples(tokenizer)
    batch = SpeechCollator(processor.feature_extractor, decoder_start_token_id=50258)(examples)
    assert batch["input_features"].shape == (2, 80, 3000)
    labels = batch["labels"]
    long, short = (len(e["labels"]) - 1 for e in examples)
    assert labels.shape == (2, -(-long // LABEL_MULTIPLE) * LABEL_MULTIPLE)  # a few widths: few kernel shapes
    assert labels[0, :long].tolist() == examples[0]["labels"][1:]
    assert labels[1, :short].tolist() == examples[1]["labels"][1:]
    assert (labels[0, long:] == IGNORE_INDEX).all() and (labels[1, short:] == IGNORE_INDEX).all()


def test_collator_keeps_start_when_not_all_rows_have_it(processor, tokenizer):
    examples = _examples(tokenizer)
    examples[1]["labels"] = examples[1]["labels"][1:]
    labels = SpeechCollator(processor.feature_extractor, 50258)(examples)["labels"]
    assert labels[0, 0].item() == 50258


def test_log_mel_matches_feature_extractor_and_bins(processor):
    from transformers import WhisperFeatureExtractor

    audio = tone(1.5, 16000)
    feats = log_mel(processor.feature_extractor, [audio])
    ref = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
    assert np.allclose(feats.numpy(), ref, atol=1e-4)
    assert log_mel(WhisperFeatureExtractor(feature_size=128), [audio]).shape == (1, 128, 3000)


def test_batch_runs_through_tiny_whisper(processor, tokenizer, tiny_model):
    """Padding must not change the loss: a padded batch's loss equals the token-weighted
    mean of the per-clip losses."""
    examples = _examples(tokenizer)
    collate = SpeechCollator(processor.feature_extractor, tiny_model.config.decoder_start_token_id)
    with torch.no_grad():
        batch = collate(examples)
        loss = tiny_model(**batch).loss
        singles = [(tiny_model(**collate([e])).loss, len(e["labels"]) - 1) for e in examples]
    weighted = sum(loss_i * n for loss_i, n in singles) / sum(n for _, n in singles)
    assert torch.isfinite(loss) and torch.allclose(loss, weighted, atol=1e-4)
