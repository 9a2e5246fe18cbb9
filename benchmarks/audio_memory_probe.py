"""How much memory does one upload cost the API server? Peak RSS above idle of a live
``whisper-tune api`` process (uvicorn, default limits: 25 MB, 600 s) under hostile and
normal uploads, one at a time and N at once:

    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/audio_memory_probe.py \\
        --out benchmarks/results/audio-memory-probe.json

Each case starts a fresh server (so its VmHWM is that case's peak), reads its idle VmRSS,
posts the files (N threads at once), and reads VmHWM from /proc when all have answered.
The server's engine is a stub that holds the decoded audio for 1 s and says nothing: the
model's own memory depends on the model, not on the upload, and is left out; what is
measured is decoding and queueing. Files (generated into a temporary folder):

* ``bomb-384k``: 120 s of silence, 384 kHz x 8 channels, FLAC (~57 KB). Issue 29: peak
  1.0 -> 2.6 GB for one, 0.7 -> 3.7 GB for two. Now refused from its header (413).
* ``bomb-192k-599s``: 599 s, 192 kHz x 8 channels, FLAC: the widest file every limit
  accepts (would be ~3.7 GB as float32 before the down-mix). Decoded in 8 MB blocks.
* ``speech-600s-mp3``: 600 s, 48 kHz mono, 64 kbps MP3 (4.8 MB): a long normal upload.
* ``stereo-30s-wav``: 30 s, 44.1 kHz stereo, 16-bit WAV (5.3 MB): a short normal upload.

Prints one line per case (MB above idle) and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CONCURRENT = 4  # the "N at once" of each case: twice the API's decode slots


def _serve(port: int) -> None:
    """The server process: the API around a stub engine, default limits."""
    import uvicorn

    from whisper_tune.api import build_app
    from whisper_tune.inference import Engine

    class Stub(Engine):
        kind = "stub"

        def transcribe(self, audios, language=None, task=None, prompt=None, decoding=None, batch_size=16, **options):
            time.sleep(1.0)
            return [([], "en") for _ in audios]

    uvicorn.run(
        build_app(Stub("stub", None, "transcribe"), model_id="stub"), host="127.0.0.1", port=port, log_level="warning"
    )


def _kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _silence_flac(path: Path, seconds: int, sr: int, channels: int) -> Path:
    import soundfile as sf

    block = np.zeros((sr, channels), dtype=np.int16)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(block)
    return path


def _files(folder: Path) -> dict[str, Path]:
    import soundfile as sf

    mp3 = folder / "speech-600s.mp3"
    lavfi = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "anoisesrc=d=600:r=48000:a=0.1"]
    subprocess.run([*lavfi, "-b:a", "64k", str(mp3)], check=True)
    t = np.arange(30 * 44100) / 44100
    wav = folder / "stereo-30s.wav"
    sf.write(str(wav), np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2, axis=1), 44100, subtype="PCM_16")
    return {
        "bomb-384k": _silence_flac(folder / "bomb-384k.flac", 120, 384000, 8),
        "bomb-192k-599s": _silence_flac(folder / "bomb-192k-599s.flac", 599, 192000, 8),
        "speech-600s-mp3": mp3,
        "stereo-30s-wav": wav,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case(path: Path, concurrent: int) -> dict:
    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        time.sleep(0.5)
        idle = _kb(server.pid, "VmRSS")
        answers: list = []
        body = path.read_bytes()

        def post():
            r = httpx.post(
                f"{url}/v1/audio/transcriptions",
                data={"model": "stub"},
                files={"file": (path.name, body)},
                timeout=600,
            )
            answers.append((r.status_code, r.json().get("error", {}).get("message") if r.status_code != 200 else ""))

        start = time.perf_counter()
        threads = [threading.Thread(target=post) for _ in range(concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        peak = _kb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "file": path.name,
        "file_kb": round(path.stat().st_size / 1024, 1),
        "concurrent": concurrent,
        "idle_rss_mb": round(idle / 1024, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "peak_above_idle_mb": round((peak - idle) / 1024, 1),
        "seconds": round(seconds, 2),
        "answers": sorted(set(answers)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/audio-memory-probe.json")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return _serve(args.serve)
    with tempfile.TemporaryDirectory() as tmp:
        files = _files(Path(tmp))
        cases = []
        for name, path in files.items():
            for concurrent in (1, CONCURRENT):
                case = {"case": name, **_case(path, concurrent)}
                cases.append(case)
                print(
                    f"{name:>16} x{concurrent}: peak {case['peak_above_idle_mb']:7.1f} MB above idle"
                    f" ({case['idle_rss_mb']:.0f} MB idle), {case['seconds']:.1f} s, answers {case['answers']}",
                    flush=True,
                )
    result = {
        "question": "peak RSS of the api server above idle, per upload and for 4 at once",
        "command": "PYTHONPATH=$PWD/src .venv/bin/python benchmarks/audio_memory_probe.py",
        "limits": {"max_mb": 25.0, "max_seconds": 600.0, "decode_slots": 2, "max_queue": 32},
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
