"""About an hour of speech-like audio in several long files, with reference transcripts.

    python benchmarks/longform_audio.py --out /tmp/longform-audio --files 12 --minutes 5

English sentences from the licence texts every Debian system carries
(``/usr/share/common-licenses``), spoken by espeak-ng with a voice variant, speed and pitch
per file, separated by pauses of 0.2-1.2 s and, now and then, a longer one (2-4 s), as in
a talk. Each file is written as Opus in Ogg (24 kbit/s: an hour is about 11 MB, so it fits
one device call, and soundfile reads it back) with ``NAME.txt`` holding what was said.
``manifest.json`` lists files, durations and references. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import numpy as np

LICENCES = Path("/usr/share/common-licenses")
TEXTS = ("GPL-3", "Apache-2.0", "GFDL-1.3", "LGPL-3", "MPL-2.0", "Artistic", "GPL-2")
VOICES = ("m1", "f2", "m3", "f1", "m4", "f3", "m2", "m7")
SAMPLE_RATE = 16000
PAUSE = (0.2, 1.2)  # seconds between sentences
LONG_PAUSE = (2.0, 4.0)  # seconds, after one sentence in LONG_PAUSE_EVERY
LONG_PAUSE_EVERY = 8


def sentences() -> list[str]:
    """Plain prose sentences of 6 to 30 words (no section numbers, URLs or all-caps headings)."""
    out = []
    for name in TEXTS:
        path = LICENCES / name
        if not path.is_file():
            continue
        text = re.sub(r"\s+", " ", path.read_text(encoding="utf-8", errors="replace"))
        for s in re.split(r"(?<=[.;:!?])\s+", text):
            s = s.strip()
            words = s.split()
            if not 6 <= len(words) <= 30 or re.search(r"[<>@/\\_=*#\[\]{}|]|http|www", s) or s.isupper():
                continue
            if re.match(r"^\(?[0-9a-z]\)", s) or not re.match(r"^[A-Z]", s):
                continue
            out.append(s)
    return list(dict.fromkeys(out))


def make(out: Path, files: int, minutes: float, seed: int = 0) -> dict:
    import soundfile as sf

    from whisper_tune.audio import resample
    from whisper_tune.demo_data import speak

    rng = random.Random(seed)
    pool = sentences()
    rng.shuffle(pool)
    out.mkdir(parents=True, exist_ok=True)
    manifest, k = [], 0
    for i in range(files):
        voice, speed, pitch = VOICES[i % len(VOICES)], rng.randint(150, 175), rng.randint(35, 65)
        pieces, said, seconds = [], [], 0.0
        while seconds < minutes * 60:
            text = pool[k % len(pool)]
            k += 1
            samples, sr = speak(text, "en", voice, speed, pitch)
            samples = resample(samples, sr, SAMPLE_RATE)
            long = len(said) % LONG_PAUSE_EVERY == LONG_PAUSE_EVERY - 1
            pause = np.zeros(int(rng.uniform(*(LONG_PAUSE if long else PAUSE)) * SAMPLE_RATE), np.float32)
            pieces += [samples.astype(np.float32) * 0.8, pause]
            said.append(text)
            seconds += (len(samples) + len(pause)) / SAMPLE_RATE
        audio = np.concatenate(pieces)
        name = f"talk{i:02d}"
        sf.write(out / f"{name}.ogg", audio, SAMPLE_RATE, format="OGG", subtype="OPUS")
        reference = " ".join(said)
        (out / f"{name}.txt").write_text(reference + "\n", encoding="utf-8")
        manifest.append({"file": f"{name}.ogg", "seconds": len(audio) / SAMPLE_RATE, "voice": voice, "text": reference})
        print(f"{name}.ogg: {len(audio) / SAMPLE_RATE:.0f} s, {len(said)} sentences, voice {voice}", flush=True)
    result = {"seed": seed, "files": manifest, "seconds": sum(m["seconds"] for m in manifest)}
    (out / "manifest.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--minutes", type=float, default=5.0, help="length of each file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = make(Path(args.out), args.files, args.minutes, args.seed)
    print(f"{len(result['files'])} files, {result['seconds'] / 60:.1f} min of audio in {args.out}")


if __name__ == "__main__":
    main()
