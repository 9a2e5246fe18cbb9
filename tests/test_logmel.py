import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from whisper_tune.augment import set_spec_augment, spec_augment
from whisper_tune.config import AugmentSettings
from whisper_tune.features import SpeechCollator, batch_to, log_mel_whole
from whisper_tune.logmel import N_FRAMES, LogMel, frame_mask, pad_audio

# around every edge: one sample, a hop less one, one hop, an odd length, exactly 30 s, past 30 s
LENGTHS = (1, 159, 160, 3 * 16000 + 77, 480000, 480000 + 5003)


def _clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    # loud and quiet clips: the floor 8 below each clip's own maximum must stay per clip
    return [(rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 0)).astype(np.float32) for n in lengths]


@pytest.mark.parametrize("bins", [80, 128])
def test_equals_the_feature_extractor_with_its_attention_mask(bins):
    fe = WhisperFeatureExtractor(feature_size=bins)
    clips = _clips(LENGTHS)
    ref = fe(clips, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    audio, lengths = pad_audio(clips)
    assert audio.shape == (len(clips), 480000) and lengths.tolist() == [min(n, 480000) for n in LENGTHS]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast changes nothing
        features = LogMel.of(fe)(audio)
    assert features.dtype == torch.float32 and features.shape == (len(clips), bins, N_FRAMES)
    torch.testing.assert_close(features, ref.input_features, atol=1e-5, rtol=0)
    assert torch.equal(frame_mask(lengths), ref.attention_mask)
    # padding with zeros is padding: a batch padded only to its longest clip gives the same
    short, _ = pad_audio(clips[:4])
    assert short.shape[1] == LENGTHS[3]
    torch.testing.assert_close(LogMel.of(fe)(short), features[:4], atol=1e-5, rtol=0)


def test_a_long_file_keeps_all_its_frames():
    fe = WhisperFeatureExtractor(feature_size=80)
    (clip,) = _clips([45 * 16000 + 33], seed=1)
    ref = fe(
        clip, sampling_rate=16000, return_tensors="pt", truncation=False, padding="longest", return_attention_mask=True
    )
    features, mask = log_mel_whole(fe, clip)
    assert features.shape == (1, 80, (45 * 16000 + 33) // 160)
    torch.testing.assert_close(features, ref.input_features, atol=1e-5, rtol=0)
    assert torch.equal(mask, ref.attention_mask)
    short_features, short_mask = log_mel_whole(fe, clip[:16000])  # shorter: padded to 30 s, as in training
    assert short_features.shape[-1] == N_FRAMES and int(short_mask.sum()) == 100


def test_the_audio_only_batch_becomes_the_features_batch():
    """What a GPU run computes on the device (audio moved, log-mel there) equals what the
    CPU run's workers compute, attention mask and labels included."""
    fe = WhisperFeatureExtractor(feature_size=80)
    examples = [{"audio": a, "labels": [1, 7, 8, 2][: 2 + i]} for i, a in enumerate(_clips((16000, 40000, 8000)))]
    on_host = SpeechCollator(fe, 1, attention_mask=True)(examples)
    moved = SpeechCollator(fe, 1, attention_mask=True, audio_only=True)(examples)
    assert set(moved) == {"audio", "attention_mask", "labels"} and moved["audio"].shape == (3, 40000)
    on_device = batch_to(moved, LogMel.of(fe), torch.device("cpu"))
    assert set(on_device) == set(on_host)
    for key in on_host:
        torch.testing.assert_close(on_device[key], on_host[key], atol=1e-5, rtol=0)


def test_spec_augment_draws_transformers_masks(tiny_model_dir):
    """The sync-free SpecAugment zeroes exactly what transformers' own does from the same
    numpy state (a resumed run must draw the masks an uninterrupted one drew)."""
    from transformers import WhisperForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperModel

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir)
    set_spec_augment(model, AugmentSettings(mask_time_prob=0.3, mask_feature_prob=0.2))
    assert model.model._mask_input_features.__func__ is spec_augment
    model.train()
    features = torch.randn(3, model.config.num_mel_bins, N_FRAMES) + 5.0  # no zero before masking
    mask = frame_mask(torch.tensor([16000, 80000, 480000]))
    np.random.seed(7)
    ours = model.model._mask_input_features(features.clone(), attention_mask=mask)
    np.random.seed(7)
    theirs = WhisperModel._mask_input_features(model.model, features.clone(), attention_mask=mask)
    assert torch.equal(ours, theirs) and (ours == 0).any()
    model.eval()
    assert torch.equal(model.model._mask_input_features(features, attention_mask=mask), features)
