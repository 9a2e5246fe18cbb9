"""Augmentation: deterministic per (seed, epoch, clip), shape- and rate-preserving,
training-only, and exact across --resume."""

import numpy as np
import pytest
import torch
from conftest import tone

from whisper_tune.audio import CHUNK_SECONDS, SAMPLE_RATE
from whisper_tune.augment import WaveAugment, add_noise, change_speed, coloured_noise, set_spec_augment, shift_pitch
from whisper_tune.config import AugmentSettings, load_train_config
from whisper_tune.errors import UserError
from whisper_tune.features import IndexedRows, SpeechCollator, log_mel

ALL_ON = {"speed_prob": 1.0, "gain_prob": 1.0, "noise_prob": 1.0, "pitch_prob": 1.0}


def _peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def test_a_clip_is_a_pure_function_of_seed_epoch_and_index():
    aug = WaveAugment.from_settings(AugmentSettings(**ALL_ON), seed=7)
    clip = tone(2.0, SAMPLE_RATE, 300.0)
    first = aug(clip, index=5, epoch=1)
    assert np.array_equal(first, aug(clip, index=5, epoch=1))
    assert not np.array_equal(first, aug(clip, index=5, epoch=2))  # a new epoch, a new perturbation
    assert not np.array_equal(first, aug(clip, index=6, epoch=1))
    assert not np.array_equal(first, WaveAugment.from_settings(AugmentSettings(**ALL_ON), seed=8)(clip, 5, 1))
    assert first.dtype == np.float32 and np.abs(first).max() <= 1.0 and np.isfinite(first).all()


def test_perturbations_keep_the_rate_and_do_what_they_say():
    clip = tone(2.0, SAMPLE_RATE, 400.0, amplitude=0.3)
    faster = change_speed(clip, 1.1)
    assert abs(len(faster) - len(clip) / 1.1) <= 2 and abs(_peak_hz(faster) - 440.0) < 5  # still 16 kHz audio
    shifted = shift_pitch(clip, 12.0)
    assert len(shifted) == len(clip) and abs(_peak_hz(shifted) - 800.0) < 10  # an octave up, same duration
    noise = coloured_noise(len(clip), 1.0, np.random.default_rng(0))
    noisy = add_noise(clip, noise, snr_db=10.0)
    snr = 10 * np.log10(np.mean(clip**2) / np.mean((noisy - clip) ** 2))
    assert len(noisy) == len(clip) and abs(snr - 10.0) < 0.01
    for n in (len(clip), len(clip) + 1):  # odd and even lengths
        assert len(coloured_noise(n, 2.0, np.random.default_rng(1))) == n


def test_slowing_down_never_pushes_a_clip_past_the_window():
    aug = WaveAugment.from_settings(
        AugmentSettings(speed_prob=1.0, speed_range=[0.5, 0.6], gain_prob=0, noise_prob=0), 0
    )
    long_clip = tone(CHUNK_SECONDS - 1.0, SAMPLE_RATE)
    for index in range(5):
        assert len(aug(long_clip, index, 0)) <= CHUNK_SECONDS * SAMPLE_RATE


def test_nothing_to_do_is_no_augmenter_and_bad_settings_are_named(tmp_path):
    assert WaveAugment.from_settings(AugmentSettings(enabled=False), 0) is None
    assert WaveAugment.from_settings(AugmentSettings(speed_prob=0, gain_prob=0, noise_prob=0), 0) is None
    with pytest.raises(UserError, match=r"augment.speed_prob must be a probability"):
        load_train_config(None, ["augment.speed_prob=1.5"])
    with pytest.raises(UserError, match=r"augment.snr_db must be \[min, max\]"):
        load_train_config(None, ["augment.snr_db=[30, 10]"])
    with pytest.raises(UserError, match="augment.noise_dir: .* is not a folder"):
        WaveAugment.from_settings(AugmentSettings(noise_dir=str(tmp_path / "nope")), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no audio files"):
        WaveAugment.from_settings(AugmentSettings(noise_dir=str(tmp_path / "empty")), 0)


def test_a_noise_folder_is_mixed_in(tmp_path):
    import soundfile as sf

    sf.write(str(tmp_path / "hum.wav"), tone(1.0, SAMPLE_RATE, 50.0), SAMPLE_RATE)
    settings = AugmentSettings(noise_prob=1.0, speed_prob=0, gain_prob=0, snr_db=[0.0, 0.0], noise_dir=str(tmp_path))
    aug = WaveAugment.from_settings(settings, 0)
    clip = tone(2.0, SAMPLE_RATE, 1000.0, amplitude=0.3)
    peaks = {_peak_hz(aug(clip, i, 0) - clip) for i in range(12)}
    assert any(abs(p - 50.0) < 3 for p in peaks)  # the hum, for the clips that drew the folder


def test_the_collator_augments_only_when_told_and_seeds_by_clip():
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80)
    from datasets import Dataset

    clips = [{"audio": tone(1.0, SAMPLE_RATE, 300.0 + 50 * i), "labels": [1, 5, 6, 2]} for i in range(3)]
    rows = IndexedRows(Dataset.from_list(clips).with_format("numpy"))
    plain = SpeechCollator(fe, decoder_start_token_id=1)
    batch = plain([rows[(0, 2)], rows[(0, 0)]])
    expected = log_mel(fe, [rows[2]["audio"], rows[0]["audio"]])
    assert torch.equal(batch["input_features"], expected)  # what evaluation computes, untouched
    assert "attention_mask" not in batch and batch["labels"][:, :3].tolist() == [[5, 6, 2]] * 2
    augmenting = SpeechCollator(
        fe, 1, augment=WaveAugment.from_settings(AugmentSettings(**ALL_ON), 3), attention_mask=True
    )
    one = augmenting([rows[(4, 2)], rows[(4, 0)]])
    alone = augmenting([rows[(4, 0)]])  # the same clip in another batch: the same perturbation
    assert torch.equal(one["input_features"][1], alone["input_features"][0])
    assert not torch.equal(one["input_features"][1], expected[1])
    assert one["attention_mask"].shape == (2, 3000) and 0 < int(one["attention_mask"][1].sum()) < 3000
    assert [r["index"] for r in rows.__getitems__([(4, 2), 1])] == [2, 1]


def test_spec_augment_masks_in_training_mode_only(tiny_model_dir):
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir)
    set_spec_augment(model, AugmentSettings(mask_time_prob=0.5, mask_feature_prob=0.3))
    assert model.config.apply_spec_augment
    features = torch.randn(2, model.config.num_mel_bins, 3000)
    labels = torch.tensor([[5, 6, 7], [5, 6, 7]])
    model.eval()
    with torch.no_grad():
        masked_eval = model(input_features=features.clone(), labels=labels).loss
        set_spec_augment(model, AugmentSettings(enabled=False))
        plain_eval = model(input_features=features.clone(), labels=labels).loss
        assert torch.equal(masked_eval, plain_eval)  # evaluation never masks
        set_spec_augment(model, AugmentSettings(mask_time_prob=0.5, mask_feature_prob=0.3))
        model.train()
        assert not torch.equal(model(input_features=features.clone(), labels=labels).loss, plain_eval)


def test_resume_with_augmentation_equals_the_uninterrupted_run(tiny_model_dir, small_corpus, tmp_path):
    from test_training import _adapter, _cfg, _same

    from whisper_tune.training import train

    aug = {f"augment.{k}": v for k, v in ALL_ON.items()} | {"augment.mask_time_prob": 0.3}
    full = train(_cfg(tiny_model_dir, small_corpus, tmp_path / "full", **aug), progress=False)
    plain = train(
        _cfg(tiny_model_dir, small_corpus, tmp_path / "plain", **{"augment.enabled": "false"}), progress=False
    )
    assert not _same(_adapter(full.adapter_dir), _adapter(plain.adapter_dir))  # augmentation did something
    cfg = _cfg(tiny_model_dir, small_corpus, tmp_path / "split", **aug)
    train(cfg, stop_after=3, progress=False)
    resumed_cfg = _cfg(tiny_model_dir, small_corpus, tmp_path / "split", **aug, **{"train.num_workers": 1})
    resumed = train(resumed_cfg, resume=True, progress=False)
    assert _same(_adapter(full.adapter_dir), _adapter(resumed.adapter_dir))  # same audio, same masks
