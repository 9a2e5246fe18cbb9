import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_tone

from whisper_tune.inference import (
    Engine,
    Segment,
    Transcript,
    TransformersEngine,
    expand_inputs,
    get_writer,
    output_names,
)
from whisper_tune.inference import transcribe_files as transcribe_engine_files
from whisper_tune.modeling import load_for_inference

SRT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")


def _seconds(groups):
    h, m, s, ms = map(int, groups)
    return h * 3600 + m * 60 + s + ms / 1000


def check_srt(text: str) -> list[tuple[float, float]]:
    """Parse an SRT strictly: sequential indices, well-formed times, start <= end, in order."""
    spans = []
    for n, block in enumerate(text.strip().split("\n\n"), start=1):
        lines = block.split("\n")
        assert lines[0] == str(n)
        match = SRT_TIME.match(lines[1])
        assert match, lines[1]
        start, end = _seconds(match.groups()[:4]), _seconds(match.groups()[4:])
        assert start <= end and (not spans or start >= spans[-1][0])
        spans.append((start, end))
    return spans


@pytest.fixture(scope="module")
def loaded(tiny_adapter):
    import torch

    return load_for_inference(None, str(tiny_adapter), torch.device("cpu"))


def test_long_file_bad_file_and_srt(loaded, tmp_path):
    long = write_tone(tmp_path / "long.wav", seconds=75.0, sr=16000)
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"\x00not audio" * 100)
    short = write_tone(tmp_path / "short.flac", seconds=2.0, sr=44100)
    results = list(
        transcribe_engine_files(
            TransformersEngine(loaded.model, loaded.processor, None), [long, bad, short], language="mr", progress=False
        )
    )
    assert isinstance(results[1], tuple) and results[1][0] == str(bad) and "readable" in results[1][1]
    transcript = results[0]
    assert transcript.duration == pytest.approx(75.0) and transcript.language == "mr"
    assert transcript.segments[-1].start >= 60.0  # decoding reached the third 30 s window
    assert transcript.text == " ".join(s.text for s in transcript.segments if s.text).strip()
    spans = check_srt(get_writer("srt").format(transcript))
    assert len(spans) == len(transcript.segments) and spans[-1][1] <= 75.0
    assert isinstance(results[2], Transcript) and results[2].duration == pytest.approx(2.0, abs=0.01)


def test_language_is_detected_when_not_given(loaded, tmp_path):
    (result,) = transcribe_engine_files(
        TransformersEngine(loaded.model, loaded.processor, None),
        [write_tone(tmp_path / "a.wav", 1.0)],
        language=None,
        progress=False,
    )
    assert isinstance(result.language, str) and len(result.language) in (2, 3, 5)


def test_writers():
    t = Transcript("x/clip.wav", "mr", 3.5, [Segment(0.0, 1.25, "पहिले"), Segment(1.25, 3.5, "दुसरे")])
    assert get_writer("txt").format(t) == "पहिले दुसरे\n"
    assert check_srt(get_writer("srt").format(t)) == [(0.0, 1.25), (1.25, 3.5)]
    vtt = get_writer("vtt").format(t)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nपहिले\n")
    data = json.loads(get_writer("json").format(t))
    assert data["text"] == "पहिले दुसरे" and data["segments"][1] == {"start": 1.25, "end": 3.5, "text": "दुसरे"}


def test_expand_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    a = write_tone(tmp_path / "d" / "a.wav")
    b = write_tone(tmp_path / "d" / "sub" / "b.flac")
    (tmp_path / "d" / "notes.txt").write_text("x")
    files, errors = expand_inputs(
        [str(tmp_path / "d"), str(tmp_path / "d" / "*.wav"), str(tmp_path / "none.wav"), str(tmp_path / "*.ogg")]
    )
    assert files == [a, b]  # d/a.wav again through the glob: once
    assert [e[0] for e in errors] == [str(tmp_path / "none.wav"), str(tmp_path / "*.ogg")]


def test_expand_inputs_lists_a_file_once_however_it_is_named(tmp_path, monkeypatch):
    a = write_tone(tmp_path / "a.wav")
    monkeypatch.chdir(tmp_path)
    files, errors = expand_inputs(["a.wav", str(a), "./a.wav", "*.wav", str(tmp_path / ".." / tmp_path.name / "a.wav")])
    assert files == [Path("a.wav")] and errors == []


def test_output_names_are_unique_where_stems_repeat(tmp_path):
    files = [tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav", tmp_path / "c" / "x.mp3", tmp_path / "a" / "y.wav"]
    assert output_names(files) == {files[0]: "a-x", files[1]: "b-x", files[2]: "c-x", files[3]: "y"}
    same_folder = [tmp_path / "x.wav", tmp_path / "x.mp3", tmp_path / "X.flac"]
    assert list(output_names(same_folder).values()) == ["x.wav", "x.mp3", "X.flac"]
    clash = [tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav", tmp_path / "a-x.wav"]
    assert list(output_names(clash).values()) == ["a-x", "b-x", "a-x-2"]


def test_same_stem_inputs_write_separate_outputs(tmp_path):
    files = [tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav", tmp_path / "c" / "x.mp3"]
    names = output_names(files)
    for i, f in enumerate(files):  # as cmd_transcribe writes them
        get_writer("txt").write(Transcript(str(f), "mr", 1.0, [Segment(0, 1, f"text {i}")]), tmp_path, names[f])
    assert sorted(p.read_text() for p in tmp_path.glob("*.txt")) == ["text 0\n", "text 1\n", "text 2\n"]


def test_non_finite_audio_is_refused_like_an_unreadable_file(tmp_path):
    import numpy as np
    import soundfile as sf

    from whisper_tune.audio import AudioError
    from whisper_tune.inference.ct2 import transcribe_audio_ct2
    from whisper_tune.inference.generate import transcribe_audio

    sf.write(str(tmp_path / "nan.wav"), np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    results = list(
        transcribe_engine_files(
            Engine("none", None, "transcribe"), [tmp_path / "nan.wav"], language="mr", progress=False
        )
    )
    assert results == [(str(tmp_path / "nan.wav"), "audio has non-finite samples (NaN/Inf)")]
    for transcribe in (lambda a: transcribe_audio(None, None, a), lambda a: transcribe_audio_ct2(None, a)):
        with pytest.raises(AudioError, match=r"non-finite samples \(NaN/Inf\)"):
            transcribe(np.array([0.1, np.inf], np.float32))


def test_cli_writes_outputs_and_reports_bad_files(tiny_adapter, tmp_path):
    good = write_tone(tmp_path / "good.wav", seconds=1.5)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF????")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "whisper_tune.cli",
            "transcribe",
            str(good),
            str(bad),
            "--adapter",
            str(tiny_adapter),
            "--out",
            str(tmp_path / "out"),
            "--format",
            "srt",
            "json",
            "--batch-size",
            "3",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("whisper-tune: error:")]
    assert len(errors) == 1 and str(bad) in errors[0]
    assert "max_new_tokens" not in proc.stderr  # transformers' per-clip length warning is gone
    assert (tmp_path / "out" / "good.srt").exists() and (tmp_path / "out" / "good.json").exists()
    check_srt((tmp_path / "out" / "good.srt").read_text())


def test_language_auto_detects_instead_of_the_adapters(tiny_adapter, tmp_path):
    from whisper_tune.modeling import load_for_inference

    assert load_for_inference(None, str(tiny_adapter), torch.device("cpu")).language == "mr"
    loaded = load_for_inference(None, str(tiny_adapter), torch.device("cpu"), language="auto")
    assert loaded.language is None and loaded.merged
    unmerged = load_for_inference(None, str(tiny_adapter), torch.device("cpu"), merge=False)
    assert not unmerged.merged and not unmerged.holding.quantized and hasattr(unmerged.model, "disable_adapter")


def test_an_adapter_finds_its_local_base_from_anywhere(tiny_model_dir, tiny_adapter, tmp_path, monkeypatch):
    """A base given as a relative path at training time: recorded so that it resolves from any
    working folder and after the run and base folders move together; when it is gone, one
    line names the recorded path and --model."""
    import json
    import shutil

    from whisper_tune.config import ModelConfig
    from whisper_tune.errors import UserError
    from whisper_tune.run import AdapterMeta, write_adapter_meta

    project = tmp_path / "project"
    shutil.copytree(tiny_model_dir, project / "bases" / "tiny")
    shutil.copytree(tiny_adapter, project / "runs" / "r" / "adapter")
    monkeypatch.chdir(project)
    write_adapter_meta("runs/r/adapter", ModelConfig(base="bases/tiny"), "mr", "transcribe")
    assert (
        json.loads((project / "runs/r/adapter/whisper_tune.json").read_text())["base_relative"] == "../../../bases/tiny"
    )
    monkeypatch.chdir(tmp_path)
    assert load_for_inference(None, str(project / "runs/r/adapter"), torch.device("cpu")).base == str(
        project / "bases" / "tiny"
    )
    moved = tmp_path / "elsewhere"
    shutil.move(project, moved)
    assert AdapterMeta.read(moved / "runs/r/adapter").resolve_base(moved / "runs/r/adapter") == str(
        moved / "bases/tiny"
    )
    shutil.rmtree(moved / "bases")
    with pytest.raises(UserError, match=f"trained on {project / 'bases' / 'tiny'}, which is not there.*--model"):
        load_for_inference(None, str(moved / "runs/r/adapter"), torch.device("cpu"))


def test_cli_keeps_outputs_of_same_named_files_apart_and_reads_each_file_once(tiny_adapter, tmp_path, capsys):
    from whisper_tune.cli import main

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    files = [write_tone(tmp_path / folder / "x.wav", seconds=1.0) for folder in ("a", "b")]
    files.append(write_tone(tmp_path / "b" / "x.flac", seconds=1.0))
    again = str(tmp_path / "a" / "*.wav")  # a/x.wav a second time, through a glob
    out = tmp_path / "out"
    args = ["transcribe", *map(str, files), again, "--adapter", str(tiny_adapter), "--out", str(out), "--format", "txt"]
    assert main(args) == 0
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 3 and len(set(written)) == 3, written
    assert capsys.readouterr().out.count(" -> ") == 3  # each file transcribed once


def test_initial_prompt_is_whispers_previous_text_prompt(tiny_adapter, tmp_path):
    """``transcribe --initial-prompt`` gives what the engine gives with that prompt (on
    ``generate``'s prompt_ids), and the prompt reaches the decoder. Greedy: the random model
    would otherwise run every fallback temperature."""
    from whisper_tune.audio import load_audio
    from whisper_tune.cli import main
    from whisper_tune.inference import DecodingOptions, open_engine

    clip = write_tone(tmp_path / "a.wav", seconds=2.0)
    prompt = "Pune, Nashik, Kolhapur"
    out = tmp_path / "out"
    greedy = ["--temperature-increment-on-fallback", "0"] + [
        flag for name in ("compression-ratio", "logprob", "no-speech") for flag in (f"--{name}-threshold", "none")
    ]
    args = ["transcribe", str(clip), "--adapter", str(tiny_adapter), "--format", "json", "--out", str(out), *greedy]
    assert main([*args, "--initial-prompt", prompt]) == 0
    cpu, greedy = torch.device("cpu"), DecodingOptions.greedy()
    default = open_engine(None, str(tiny_adapter), device=cpu, decoding=greedy)
    assert not default.batches(load_audio(clip), prompt=prompt)
    engine = open_engine(None, str(tiny_adapter), device=cpu, decoding=greedy, strategy="sequential")
    expected = engine.transcript(load_audio(clip), prompt=prompt)  # prompted files take generate
    assert json.loads((out / "a.json").read_text(encoding="utf-8"))["text"] == expected.text
    unprompted = engine.transcript(load_audio(clip))  # on generate too: only the prompt differs
    scores = [[(s.text, s.avg_logprob) for s in t.segments] for t in (expected, unprompted)]
    assert scores[0] != scores[1]
