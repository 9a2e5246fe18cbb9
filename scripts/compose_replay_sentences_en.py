"""Compose the English sentences of the demo's replay corpus
(src/whisper_tune/assets/demo_sentences_en.txt).

    python scripts/compose_replay_sentences_en.py       # rewrites the asset, prints the count

A fine-tune on one language forgets the others (the report card's English line: English
written in the target's script). ``data.replay`` mixes another language's clips into
training against it; the demo needs English speech to replay, and none may be
downloaded, so ``make-demo-data --language en`` speaks these sentences with espeak-ng.
They are composed here from templates and small vocabularies, with a seeded sample, so
the file is the same on every run; none of them is a sentence of the card's English set
(``card_sentences_en.txt``), which measures what the replay keeps. All of it was written
for whisper-tune and is dedicated to the public domain (CC0 1.0).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "src/whisper_tune/assets"
SEED = 24  # issue 24
TARGET = 400
HEADER = """\
# English sentences for the demo's replay corpus (make-demo-data --language en speaks them).
# Composed for whisper-tune by scripts/compose_replay_sentences_en.py from its templates and
# vocabularies; none is a sentence of card_sentences_en.txt. Dedicated to the public domain
# under CC0 1.0 (https://creativecommons.org/publicdomain/zero/1.0/).
# One sentence a line; lines starting with # are comments.
"""

PEOPLE = (
    "my sister|my uncle|our neighbour|the old farmer|a young teacher|the baker|my best friend|the doctor|"
    "her cousin|the new student|his grandmother|the bus driver|a tired nurse|the painter|our coach"
).split("|")
DID = (
    "carried a heavy box|opened the red door|painted the kitchen wall|found a small key|fixed the broken chair|"
    "cooked a large dinner|washed the blue car|planted a young tree|read a long letter|sold the old bicycle|"
    "cleaned the dusty shelf|wrote a short poem|lost a silver ring|bought fresh bread|built a wooden fence"
).split("|")
WHEN = (
    "this morning|last night|after lunch|on Sunday|before the rain|in the evening|yesterday afternoon|"
    "at the weekend|during the storm|after school"
).split("|")
PLACES = (
    "the market|the river|the station|the library|the hospital|the beach|the village|the museum|the park|"
    "the harbour|the mountain road|the city square"
).split("|")
THINGS = (
    "the soup|the coffee|the water|the music|the garden|the room|the street|the sky|the bread|the lake|"
    "the wind|the road"
).split("|")
STATES = (
    "too hot|very cold|quite loud|almost empty|really quiet|still warm|a little sweet|very bright|"
    "rather dark|much cleaner"
).split("|")
TEMPLATES = (
    lambda r: f"{r.choice(PEOPLE).capitalize()} {r.choice(DID)} {r.choice(WHEN)}.",
    lambda r: f"We walked to {r.choice(PLACES)} {r.choice(WHEN)}.",
    lambda r: f"{r.choice(THINGS).capitalize()} was {r.choice(STATES)} {r.choice(WHEN)}.",
    lambda r: f"Did {r.choice(PEOPLE)} go to {r.choice(PLACES)} {r.choice(WHEN)}?",
    lambda r: f"I think {r.choice(THINGS)} is {r.choice(STATES)} today.",
    lambda r: f"{r.choice(PEOPLE).capitalize()} met {r.choice(PEOPLE)} near {r.choice(PLACES)}.",
    lambda r: f"Please tell {r.choice(PEOPLE)} that {r.choice(THINGS)} is {r.choice(STATES)}.",
)


def compose() -> list[str]:
    card = {line.strip().lower() for line in (ASSETS / "card_sentences_en.txt").read_text().splitlines()}
    rng, out = random.Random(SEED), {}
    for template in itertools.cycle(TEMPLATES):
        sentence = template(rng)
        if sentence.lower() not in card:
            out.setdefault(sentence, None)
        if len(out) == TARGET:
            return list(out)


if __name__ == "__main__":
    sentences = compose()
    (ASSETS / "demo_sentences_en.txt").write_text(HEADER + "\n".join(sentences) + "\n", encoding="utf-8")
    print(f"{len(sentences)} sentences")
