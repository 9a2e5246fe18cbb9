"""Grade a fine-tune against its base: the report card (``report_card``) played by two real
models through the inference engine, the way users run them.

Both columns decode through ``inference.open_engine`` and ``Engine.transcribe``, the path of
``whisper-tune transcribe`` and ``api``: long files cut and stitched as ``transcribe`` cuts
them, English with the adapter active and the language forced. The language-ID line detects
each clip's language first (whatever language the adapter was trained on) and then
transcribes it in that language.

Decoding is greedy (``evaluate``'s default), not ``transcribe``'s temperature fallback: a
fine-tune that fails the fallback's checks on non-speech and foreign speech would have
every such window decoded up to six times, and the card, which runs at the end of every
GPU training run, would cost many minutes (a study of nine runs on one H100 did not see a
card finish in 13 minutes: benchmarks/results/card-study-h100/). Greedy also shows the
loops and the text on silence that fallback would partly hide, which is what the card is
for. ``decoding`` (``evaluate --card --decoding robust``) takes the fallback when wanted.

The base and the fine-tune are two engines (the base, and base + adapter merged): two
copies of the weights, so that both run the fast batched decoder. On a CPU the card is
opt-in (``eval.card``) and smaller sets (:class:`CardSize`) keep it to minutes.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE
from .card_sets import LONGFORM_SECONDS, NONSPEECH_CLIPS, standard_sets
from .inference import DecodingOptions, Engine, open_engine
from .report_card import Card, Decode, LabelledSet, build_card, write_card

log = logging.getLogger(__name__)

CARD_FILES = ("card.md", "card.json")


@dataclass(frozen=True)
class CardSize:
    """How much each set of the card holds."""

    target: int | None = None  # held-out clips of the target language (None: all given)
    nonspeech: int = NONSPEECH_CLIPS  # generated non-speech clips, 5-30 s each
    longform_seconds: float = LONGFORM_SECONDS  # each long file joined from held-out clips
    english: int | None = None  # English clips (None: all 40)
    language_id: int | None = None  # language-ID clips (None: all 25)
    seed: int = 0

    @classmethod
    def for_cpu(cls) -> CardSize:
        """Small enough for a 2-core CPU (Whisper base: a few minutes for both columns); the
        long file takes as many held-out clips as 2 minutes need."""
        return cls(target=40, nonspeech=11, english=20)

    @classmethod
    def for_this_machine(cls) -> CardSize:
        """The whole card with a GPU (seconds for Whisper base), :meth:`for_cpu` without."""
        import torch

        return cls() if torch.cuda.is_available() else cls.for_cpu()


def engine_decode(engine: Engine, base: bool = False) -> Decode:
    """A ``report_card.Decode`` over ``engine``: clips of any length through
    ``engine.transcribe``; with language None, each clip's language is detected first and it
    is transcribed in that language. ``base``: the adapter switched off (an engine opened
    with the adapter unmerged)."""

    def decode(audios: list[np.ndarray], language: str | None):
        with engine.base_only() if base else nullcontext():
            languages = [language] * len(audios) if language else engine.detect_languages(audios)
            out: list = [None] * len(audios)
            for lang in dict.fromkeys(languages):
                picked = [i for i, found in enumerate(languages) if found == lang]
                results = engine.transcribe([audios[i] for i in picked], language=lang)
                for i, (segments, used) in zip(picked, results):
                    out[i] = (" ".join(s.text for s in segments if s.text).strip(), segments, used)
        return out

    return decode


def held_out(dataset, limit: int | None = None) -> LabelledSet:
    """The target set from a prepared split (``prepare``'s 16 kHz audio and text columns)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows = dataset.select_columns(["audio", "text"]).with_format("numpy")[:n]
    return LabelledSet([np.ascontiguousarray(a, dtype=np.float32) for a in rows["audio"]], list(rows["text"]))


def grade(
    base: str | None,
    adapter: str,
    language: str,
    target: LabelledSet,
    out: str | Path,
    size: CardSize | None = None,
    device=None,
    remark: str = "",
    decoding: DecodingOptions | None = None,
) -> Card:
    """The report card of ``adapter`` against its base on ``target`` (held-out clips of
    ``language``) and the standard sets; writes card.md and card.json into ``out``.
    ``decoding``: how both columns decode (default: greedy, see above); ``remark``: one line
    under the card's headline."""
    size = size or CardSize()
    sets = standard_sets(
        language,
        _first(target, size.target),
        nonspeech=size.nonspeech,
        longform_seconds=size.longform_seconds,
        seed=size.seed,
        longform_from=_first_seconds(target, size.target, size.longform_seconds),
    )
    sets = replace(
        sets, english=_first(sets.english, size.english), language_id=_first(sets.language_id, size.language_id)
    )
    decoding = decoding or DecodingOptions.greedy()
    tuned = open_engine(base, adapter, device=device, language=language, decoding=decoding)
    plain = open_engine(tuned.loaded.base, None, device=device, language=language, decoding=decoding)
    card = build_card(engine_decode(plain), engine_decode(tuned), sets, "base", "fine-tune")
    card = replace(card, remark=remark)
    write_card(card, out)
    log.info("report card: %s", card.headline())
    return card


def grade_split(
    base: str | None,
    adapter: str,
    language: str,
    prepared,
    out: str | Path,
    limit: int | None = None,
    size: CardSize | None = None,
    remark: str = "",
    decoding: DecodingOptions | None = None,
) -> Card:
    """The card on a prepared split's clips (at most ``limit``; this machine's
    :class:`CardSize` unless ``size``): the one way ``train`` (its eval split), ``evaluate
    --card`` (the split it scored) and ``demo`` (the test split) grade, so that their cards
    measure the same thing. ``limit`` bounds the target's clips; the long-form file takes
    more of the split where those are too short for one (``train``'s 25 eval clips are)."""
    size = size or CardSize.for_this_machine()
    n = min((k for k in (limit, size.target) if k is not None), default=None)
    if "duration" in prepared.column_names:  # prepare's column: the clips' lengths without reading their audio
        seconds_each = prepared["duration"]
    else:
        seconds_each = [len(a) / SAMPLE_RATE for a in prepared["audio"]]
    target = held_out(prepared, _covering(seconds_each, n, size.longform_seconds))  # grade takes n of them
    return grade(base, adapter, language, target, out, replace(size, target=n), remark=remark, decoding=decoding)


def _first(labelled: LabelledSet | None, n: int | None) -> LabelledSet | None:
    if labelled is None or n is None:
        return labelled
    return LabelledSet(labelled.audios[:n], labelled.labels[:n])


def _covering(seconds_each, n: int | None, seconds: float) -> int | None:
    """How many leading clips the card takes: ``n`` for the target, or more where ``n`` short
    clips do not make one long file of ``seconds`` (a small card on a CPU: 40 unseen sentences
    of 3 s are 2 minutes at most, and the long-form lines would be "n/a"). None: all of them."""
    if n is None:
        return None
    total = 0.0
    for i, clip_seconds in enumerate(seconds_each):
        total += float(clip_seconds)
        if total >= seconds:
            return max(n, i + 1)
    return None


def _first_seconds(labelled: LabelledSet, n: int | None, seconds: float) -> LabelledSet:
    """The clips :func:`_covering` counts: the long file's source."""
    return _first(labelled, _covering((a.size / SAMPLE_RATE for a in labelled.audios), n, seconds))


def copy_card(run_folder: Path, adapter_dir: Path) -> None:
    """Put the run's card.md/card.json beside an adapter, so that ``export`` and
    ``push_to_hub`` find it with the adapter alone."""
    for name in CARD_FILES:
        src = Path(run_folder) / name
        if src.is_file() and Path(adapter_dir).is_dir():
            (Path(adapter_dir) / name).write_bytes(src.read_bytes())
