"""Training that preserves (issue 24 item 2): the targets each switch writes, read back with
the tokenizer; shares kept on average; batches a pure function of (seed, epoch, clip); the
loss masked on prompts; exact resume with every switch on."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import tone, write_tone
from safetensors.torch import load_file

from whisper_tune.config import PreserveSettings, load_train_config
from whisper_tune.demo import GPU_OVERRIDES
from whisper_tune.errors import UserError
from whisper_tune.features import IGNORE_INDEX, SpeechCollator, set_prefix
from whisper_tune.preserve import (
    Preserver,
    Specials,
    no_speech_labels,
    no_speech_token,
    prompted_rows,
    speech_bounds,
    timestamp_labels,
)

SR = 16000
TEXTS = ["नमस्कार जग", "आज पाऊस पडला", "मी घरी जातो", "पुस्तक वाच", "चहा गरम आहे", "शाळा सुरू झाली"]


@pytest.fixture()
def mr_tokenizer(tokenizer):
    set_prefix(tokenizer, "mr")
    return tokenizer


def _examples(tokenizer, n=6, epoch=0, seconds=1.0):
    """Clips with silence either side of a tone (0.3 s before, 0.5 s after) and their labels."""
    audio = np.concatenate([np.zeros(int(0.3 * SR)), tone(seconds, SR), np.zeros(int(0.5 * SR))]).astype(np.float32)
    return [
        {"audio": audio, "labels": np.asarray(tokenizer(TEXTS[i % len(TEXTS)]).input_ids), "index": i, "epoch": epoch}
        for i in range(n)
    ]


OFF = {"nonspeech_share": 0.0, "timestamp_share": 0.0, "prompt_share": 0.0}


def _preserver(tokenizer, **shares):
    """The switches given, every other one off (the defaults turn some on)."""
    settings = PreserveSettings(**(OFF | shares))
    return Preserver.from_settings(settings, seed=7, tokenizer=tokenizer, texts=TEXTS)


def _tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


# ---- the targets ----------------------------------------------------------------------


def test_no_speech_token_is_the_tokenizers_own(mr_tokenizer):
    assert mr_tokenizer.convert_ids_to_tokens(no_speech_token(mr_tokenizer)) == "<|nospeech|>"

    class HubV2:  # the hub's base/v2 tokenizers name the same slot <|nocaptions|>
        def get_vocab(self):
            return {"<|nocaptions|>": 50362}

    assert no_speech_token(HubV2()) == 50362


def test_no_speech_targets_decode_to_whispers_own(mr_tokenizer):
    specials = Specials.of(mr_tokenizer)
    labels = mr_tokenizer(TEXTS[0]).input_ids
    nospeech = no_speech_labels(labels, specials, "nospeech")
    assert mr_tokenizer.decode(nospeech) == "<|startoftranscript|><|nospeech|><|endoftext|>"
    empty = no_speech_labels(labels, specials, "empty")
    assert mr_tokenizer.decode(empty) == "<|startoftranscript|><|mr|><|transcribe|><|notimestamps|><|endoftext|>"
    stamped = _tokens(mr_tokenizer, no_speech_labels(labels, specials, "empty", timestamps=True))
    assert stamped == ["<|startoftranscript|>", "<|mr|>", "<|transcribe|>", "<|0.00|>", "<|endoftext|>"]
    assert no_speech_labels(labels, specials, "nospeech", timestamps=True) == nospeech  # Whisper's own has no mode


def test_empty_non_speech_targets_come_in_both_decoding_modes(processor, mr_tokenizer):
    """transcribe decodes with time stamps, evaluate without: silence must end the text in both,
    whatever timestamp_share says (the time-stamp form is half of them)."""
    pres = _preserver(mr_tokenizer, nonspeech_share=0.5)
    examples = _examples(mr_tokenizer, n=40)
    plans = [pres.plan(e["index"], e["epoch"]) for e in examples]
    silent = [i for i, p in enumerate(plans) if p.swap == "nonspeech"]
    forms = {plans[i].timestamps for i in silent}
    assert forms == {True, False}
    labels = _collate(processor, pres, examples)["labels"]
    for i in silent:
        tokens = _tokens(mr_tokenizer, [int(t) for t in labels[i] if t != IGNORE_INDEX])
        tail = ["<|0.00|>", "<|endoftext|>"] if plans[i].timestamps else ["<|notimestamps|>", "<|endoftext|>"]
        assert tokens == ["<|mr|>", "<|transcribe|>", *tail]
    nospeech = _preserver(mr_tokenizer, nonspeech_share=0.5, nonspeech_target="nospeech")
    assert not any(p.timestamps for p in (nospeech.plan(i, 0) for i in range(40)) if p.swap == "nonspeech")


def test_speech_bounds_trim_the_silence_either_side():
    audio = np.concatenate([np.zeros(int(0.3 * SR)), tone(1.0, SR), np.zeros(int(0.5 * SR))])
    assert speech_bounds(audio) == pytest.approx((0.3, 1.3), abs=0.021)
    assert speech_bounds(np.zeros(SR)) == (0.0, 1.0)  # nothing loud: the whole clip


def test_timestamp_target_brackets_the_text_and_drops_notimestamps(mr_tokenizer):
    specials = Specials.of(mr_tokenizer)
    labels = mr_tokenizer(TEXTS[1]).input_ids
    stamped = timestamp_labels(labels, specials, end_s=1.2345)
    tokens = _tokens(mr_tokenizer, stamped)
    assert tokens[:4] == ["<|startoftranscript|>", "<|mr|>", "<|transcribe|>", "<|0.00|>"]
    assert tokens[-2:] == ["<|1.24|>", "<|endoftext|>"] and "<|notimestamps|>" not in tokens
    assert stamped[4:-2] == labels[4:-1]  # the text itself is untouched
    assert _tokens(mr_tokenizer, timestamp_labels(labels, specials, 99.0))[-2] == "<|30.00|>"


def test_prompt_is_another_clips_text_and_the_loss_skips_it(mr_tokenizer):
    pres = _preserver(mr_tokenizer, prompt_share=0.5)
    labels = mr_tokenizer(TEXTS[0]).input_ids
    prompt = pres.prompt(2, len(labels))
    assert mr_tokenizer.decode(prompt) == "<|startofprev|> " + TEXTS[2]
    inputs, targets = prompted_rows(prompt, labels, IGNORE_INDEX)
    assert inputs == prompt + labels[:-1] and len(targets) == len(inputs)
    assert targets[: len(prompt)] == [IGNORE_INDEX] * len(prompt)  # prompt tokens and <|startoftranscript|>
    assert targets[len(prompt) :] == labels[1:]
    # the prompt is cut from the left so that prompt and labels fit Whisper's 448 positions
    long = pres.prompt(2, 440)
    assert long[0] == pres.specials.startofprev and len(long) == 1 + 8 and long[1:] == prompt[-8:]


# ---- in the collator -------------------------------------------------------------------


def _collate(processor, pres, examples):
    collate = SpeechCollator(processor.feature_extractor, 50258, preserve=pres, audio_only=True)
    return collate(examples)


def test_collated_batch_decodes_to_each_plan(processor, mr_tokenizer):
    pres = _preserver(
        mr_tokenizer, nonspeech_share=0.3, nonspeech_target="nospeech", timestamp_share=0.4, prompt_share=0.4
    )
    examples = _examples(mr_tokenizer, n=24)
    plans = [pres.plan(e["index"], e["epoch"]) for e in examples]
    assert {p.swap for p in plans} >= {None, "nonspeech"} and any(p.timestamps for p in plans)
    assert any(p.prompt_row is not None for p in plans)
    batch = _collate(processor, pres, examples)
    inputs, labels = batch["decoder_input_ids"], batch["labels"]
    assert inputs.shape == labels.shape and labels.shape[1] % 16 == 0
    for i, plan in enumerate(plans):
        seen = [int(t) for t in inputs[i]]
        wanted = [int(t) for t in labels[i] if t != IGNORE_INDEX]
        text = mr_tokenizer.decode(wanted)
        if plan.swap == "nonspeech":
            assert mr_tokenizer.decode(seen[:1]) == "<|startoftranscript|>" and text == "<|nospeech|><|endoftext|>"
            assert not np.allclose(batch["audio"][i, : int(0.3 * SR)], 0) or plan.noise_kind == "silence"
            continue
        if plan.prompt_row is not None:
            n = seen.index(pres.specials.sot)
            assert mr_tokenizer.decode(seen[:n]) == "<|startofprev|> " + TEXTS[plan.prompt_row]
            assert plan.prompt_row != i  # another clip's text
            assert (labels[i, :n] == IGNORE_INDEX).all()  # the loss mask covers the prompt
        if plan.timestamps:  # decode() leaves timestamps out: read them as tokens
            tokens = _tokens(mr_tokenizer, wanted)
            assert tokens[:3] == ["<|mr|>", "<|transcribe|>", "<|0.00|>"]
            assert tokens[-2:] == ["<|1.30|>", "<|endoftext|>"]
            assert "<|notimestamps|>" not in tokens
        else:
            assert text.startswith("<|mr|><|transcribe|><|notimestamps|>")
        assert TEXTS[i % len(TEXTS)] in text


def test_without_prompts_the_batch_is_labels_only(processor, mr_tokenizer):
    pres = _preserver(mr_tokenizer, timestamp_share=0.5)
    examples = _examples(mr_tokenizer, n=8)
    batch = _collate(processor, pres, examples)
    plain = _collate(processor, None, examples)
    assert "decoder_input_ids" not in batch and torch.equal(batch["audio"], plain["audio"])
    stamped = [i for i in range(8) if pres.plan(i, 0).timestamps]
    assert stamped and len(stamped) < 8
    for i in range(8):
        assert torch.equal(batch["labels"][i], plain["labels"][i]) == (i not in stamped)


def test_all_off_builds_nothing(mr_tokenizer):
    assert _preserver(mr_tokenizer) is None


def test_the_defaults_are_the_card_studys_choice():
    """Non-speech 10 % and joined timestamps 50 % on, prompts off (the reference recipe turns
    all off: test_shares_are_validated_in_one_line); the demo's CPU recipe leaves timestamps
    to the GPU."""
    chosen = PreserveSettings()
    assert (chosen.nonspeech_share, chosen.nonspeech_target, chosen.timestamp_share) == (0.1, "empty", 0.5)
    assert chosen.timestamp_clips == 4 and chosen.prompt_share == 0.0
    demo = load_train_config("demo").preserve
    assert (demo.nonspeech_share, demo.timestamp_share) == (0.1, 0.0)
    assert load_train_config("demo", list(GPU_OVERRIDES)).preserve.timestamp_share == 0.5


def test_shares_hold_on_average(mr_tokenizer):
    pres = _preserver(mr_tokenizer, nonspeech_share=0.1, timestamp_share=0.3, prompt_share=0.2)
    plans = [pres.plan(i, epoch) for epoch in range(2) for i in range(3000)]
    n = len(plans)
    nonspeech = sum(p.swap == "nonspeech" for p in plans) / n
    speech = [p for p in plans if p.swap is None]
    stamps = sum(p.timestamps for p in speech) / len(speech)
    prompts = sum(p.prompt_row is not None for p in speech) / len(speech)
    for got, share in ((nonspeech, 0.1), (stamps, 0.3), (prompts, 0.2)):
        assert abs(got - share) < 4 * np.sqrt(share * (1 - share) / n) + 0.005, (got, share)
    assert len({p.noise_kind for p in plans if p.swap == "nonspeech"}) >= 8  # the generator's kinds go round


def test_seeded_batches_are_reproducible(processor, mr_tokenizer):
    pres = _preserver(mr_tokenizer, nonspeech_share=0.3, timestamp_share=0.3, prompt_share=0.3)
    a = _collate(processor, pres, _examples(mr_tokenizer, n=12))
    b = _collate(processor, pres, _examples(mr_tokenizer, n=12)[::-1])  # another batch order, same clips
    order = list(range(11, -1, -1))
    for key in a:
        assert torch.equal(a[key], b[key][order]), key
    other_epoch = [pres.plan(i, 1) for i in range(12)]
    assert other_epoch != [pres.plan(i, 0) for i in range(12)]  # each epoch draws anew
    assert [pres.plan(i, 0) for i in range(12)] == [pres.plan(i, 0) for i in range(12)]


def test_noise_dir_clips_stand_in_for_half_the_non_speech(tmp_path, mr_tokenizer):
    (tmp_path / "noise").mkdir()
    write_tone(tmp_path / "noise" / "hum.wav", seconds=6.0)
    settings = PreserveSettings(**(OFF | {"nonspeech_share": 0.5, "noise_dir": str(tmp_path / "noise")}))
    pres = Preserver.from_settings(settings, 7, mr_tokenizer)
    plans = [pres.plan(i, 0) for i in range(400)]
    users = [p for p in plans if p.noise_kind == "user"]
    assert 0.35 < len(users) / sum(p.swap == "nonspeech" for p in plans) < 0.65
    i = plans.index(users[0])
    example = {"audio": np.zeros(2 * SR, np.float32), "labels": mr_tokenizer("x").input_ids, "index": i, "epoch": 0}
    (swapped,) = pres.swap([example])
    assert len(swapped["audio"]) == 2 * SR and np.abs(swapped["audio"]).max() > 0.1  # a stretch of the tone
    with pytest.raises(UserError, match="noise folder"):
        missing = PreserveSettings(nonspeech_share=0.5, noise_dir=str(tmp_path / "nope"))
        Preserver.from_settings(missing, 7, mr_tokenizer)


def test_shares_are_validated_in_one_line():
    for key, value, says in (
        ("preserve.nonspeech_share", 1, "preserve.nonspeech_share must be a share of samples in [0, 1)"),
        ("preserve.prompt_share", -0.1, "preserve.prompt_share must be a share"),
        ("preserve.timestamp_share", ".nan", "preserve.timestamp_share must be a share"),
        ("preserve.nonspeech_target", "silence", "nospeech or empty"),
    ):
        with pytest.raises(UserError, match=re.escape(says)) as e:
            load_train_config(None, [f"{key}={value}"])
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="must be below 1"):
        load_train_config(None, ["preserve.nonspeech_share=0.6", "data.replay.share=0.5", "data.replay.source=x"])
    cfg = load_train_config("marathi-large-v2-int8")  # the reference recipe preserves nothing
    assert (cfg.preserve, cfg.data.replay.share) == (PreserveSettings(**OFF), 0.0)


# ---- exact resume with every switch on -------------------------------------------------


def _run_cfg(model_dir, corpus, replay_source, out, **extra):
    values = {
        "model.base": model_dir,
        "model.quantization": "none",
        "model.gradient_checkpointing": "false",
        "data.source": corpus,
        "data.train_split": "train",
        "data.replay.source": replay_source,
        "data.replay.language": "en",
        "data.replay.split": "train",
        "data.replay.share": 0.2,
        "preserve.nonspeech_share": 0.2,
        "preserve.timestamp_share": 0.3,
        "preserve.prompt_share": 0.3,
        "train.output_dir": out,
        "train.batch_size": 4,
        "train.max_steps": 4,
        "train.num_workers": 0,
        "train.log_every": 1,
        "train.save_every": 2,
        "train.warmup_steps": 1,
        "train.learning_rate": "1e-3",
        "eval.every": -1,
        "lora.r": 4,
        "lora.alpha": 8,
    } | extra
    return load_train_config(None, [f"{k}={v}" for k, v in values.items()])


def test_resume_with_every_switch_on_equals_uninterrupted(tiny_model_dir, small_corpus, four_clips, tmp_path):
    from whisper_tune.training import train

    full = train(_run_cfg(tiny_model_dir, small_corpus, four_clips, tmp_path / "full"), progress=False)
    cfg = _run_cfg(tiny_model_dir, small_corpus, four_clips, tmp_path / "split")
    first = train(cfg, stop_after=2, progress=False)
    assert first.stopped_early and first.steps == 2
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.steps == 4
    a, b = (load_file(str(r.adapter_dir / "adapter_model.safetensors")) for r in (full, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((tmp_path / "full" / "run.json").read_text())
    assert record["replay"] == {"source": str(four_clips), "language": "en", "split": "train", "share": 0.2, "clips": 4}
    assert record["config"]["preserve"]["prompt_share"] == 0.3
    shutil.rmtree(tmp_path / "full" / "prepared")


def test_the_training_step_reads_the_prompt_and_skips_it_in_the_loss(processor, mr_tokenizer, tiny_model):
    """The step feeds the prompted decoder input (shifting masked labels would lose the
    prompt), and the loss is the mean over the transcript's targets alone."""
    from whisper_tune.optimization import OptimizerStep

    pres = _preserver(mr_tokenizer, prompt_share=0.9)
    batch = SpeechCollator(processor.feature_extractor, 50258, preserve=pres)(_examples(mr_tokenizer, n=4))
    assert "decoder_input_ids" in batch and (batch["labels"] == IGNORE_INDEX).sum() > 0
    model = tiny_model  # in eval mode: no dropout, so the two losses compare exactly
    optimizer = torch.optim.AdamW([p for p in model.parameters()], lr=0)
    with torch.no_grad():
        loss = OptimizerStep(model, optimizer, None, 0.0)._loss(batch)
        logits = model(input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]).logits
    wanted = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss, wanted, atol=1e-5)
    shifted = batch["labels"].clone()  # what the model would have read without decoder_input_ids
    with torch.no_grad():
        unprompted = model(input_features=batch["input_features"], labels=shifted).loss
    assert not torch.allclose(loss, unprompted, atol=1e-4)


# ---- joined timestamp samples ------------------------------------------------------------


def _rows(tokenizer, seconds=(2.0, 3.0, 1.5, 2.5)):
    """Training rows as the collator's Preserver reads them: a tone burst in each clip."""
    rows = []
    for i, s in enumerate(seconds):
        audio = np.zeros(int(s * SR), np.float32)
        audio[int(0.2 * SR) : int((s - 0.3) * SR)] = 0.3 * np.sin(np.arange(int((s - 0.5) * SR)) / 5.0)
        rows.append({"audio": audio, "labels": np.asarray(tokenizer(TEXTS[i % len(TEXTS)]).input_ids)})
    return rows


def test_joined_timestamp_samples_give_each_clip_its_segment(processor, mr_tokenizer):
    """Several clips in one window, each between its own timestamps at its speech: what
    long-form decoding needs the model to keep writing after the first sentence."""
    rows = _rows(mr_tokenizer)
    settings = PreserveSettings(**(OFF | {"timestamp_share": 0.99}), timestamp_clips=4)
    pres = Preserver.from_settings(settings, 3, mr_tokenizer, rows=rows)
    examples = [dict(rows[i % 4], index=i, epoch=0) for i in range(40)]
    plans = [pres.plan(e["index"], 0) for e in examples]
    assert {len(p.joined) for p in plans} == {0, 1, 2, 3}  # 1 to 4 clips per window
    swapped = pres.swap(examples)
    for e, plan in zip(swapped, plans):
        if not plan.timestamps:
            continue
        ((_, labels),) = pres.targets([e], [e["audio"]])
        tokens = _tokens(mr_tokenizer, labels)
        stamps = [float(t[2:-2]) for t in tokens if re.fullmatch(r"<\|\d+\.\d\d\|>", t)]
        if not plan.joined:
            assert len(stamps) == 2 and "spans" not in e
            continue
        clips = 1 + len(plan.joined)
        assert len(stamps) == 2 * clips and stamps == sorted(stamps)  # a segment per clip, time rising
        assert len(e["audio"]) / SR <= 28.0 and "<|notimestamps|>" not in tokens
        texts = [TEXTS[plan_row % len(TEXTS)] for plan_row in (e["index"] % 4, *plan.joined)]
        begin, runs = pres.specials.timestamp_begin, [[]]
        for t in labels[3:-1]:  # after <|startoftranscript|><|mr|><|transcribe|>, before <|endoftext|>
            runs.append([]) if t >= begin else runs[-1].append(t)
        assert [mr_tokenizer.decode(r) for r in runs if r] == texts
        for (start, end), stamp in zip(e["spans"], zip(stamps[::2], stamps[1::2])):
            assert abs(stamp[0] - start) <= 0.02 and abs(stamp[1] - end) <= 0.02  # the speech, not the pause
    assert pres.plan(5, 0) == Preserver.from_settings(settings, 3, mr_tokenizer, rows=rows).plan(5, 0)


def test_a_speed_change_moves_the_joined_timestamps_with_the_audio(mr_tokenizer):
    rows = _rows(mr_tokenizer)
    pres = Preserver.from_settings(
        PreserveSettings(**(OFF | {"timestamp_share": 0.99}), timestamp_clips=4), 3, mr_tokenizer, rows=rows
    )
    i = next(i for i in range(100) if len(pres.plan(i, 0).joined) >= 2)
    (e,) = pres.swap([dict(rows[0], index=i, epoch=0)])
    faster = e["audio"][::2]  # twice the speed: every time halves
    ((_, normal),) = pres.targets([e], [e["audio"]])
    ((_, quick),) = pres.targets([e], [faster])
    last = [t for t in _tokens(mr_tokenizer, normal) if t.startswith("<|") and t[2].isdigit()][-1]
    last_quick = [t for t in _tokens(mr_tokenizer, quick) if t.startswith("<|") and t[2].isdigit()][-1]
    assert abs(float(last_quick[2:-2]) - float(last[2:-2]) / 2) <= 0.02


def test_joining_needs_the_rows_and_leaves_other_plans_as_they_were(mr_tokenizer):
    settings = PreserveSettings(nonspeech_share=0.2, timestamp_share=0.5, prompt_share=0.2)
    alone = Preserver.from_settings(settings, 3, mr_tokenizer)  # no rows: each timestamp sample is its clip
    joined = Preserver.from_settings(settings, 3, mr_tokenizer, rows=_rows(mr_tokenizer))
    assert all(not alone.plan(i, 0).joined for i in range(200))
    for i in range(200):  # the joined rows are drawn last: every other choice is the same
        a, b = alone.plan(i, 0), joined.plan(i, 0)
        assert (a.swap, a.timestamps, a.prompt_row, a.noise_kind) == (b.swap, b.timestamps, b.prompt_row, b.noise_kind)
        assert not b.joined or (b.timestamps and b.swap is None and b.prompt_row is None)
