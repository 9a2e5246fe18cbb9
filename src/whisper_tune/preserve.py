"""Training that preserves what Whisper could do before the fine-tune (issue 24, item 2).

A fine-tune on clean read speech teaches the model four things nobody asked for: every
clip holds words (so it writes text on silence and noise), no transcript has timestamps
(so long-form transcription, which needs them, breaks), nothing comes before
<|startoftranscript|> (so ``initial_prompt`` and hotwords stop helping), and only one
language exists. Whisper learned all four from its own training data; this module puts a
share of each back into the fine-tune's batches:

- **non-speech** (``preserve.nonspeech_share``): the clip is swapped for a generated one
  (``nonspeech.py``) or a piece of the user's noise (``preserve.noise_dir``), with the
  target Whisper was trained on: <|startoftranscript|><|nospeech|> (``<|nocaptions|>`` in
  tokenizers converted before v3), or an empty transcript. Half of the empty targets take
  the time-stamp form (the prefix without <|notimestamps|>, then <|0.00|><|endoftext|>):
  ``transcribe``, the API and the card decode every window with time stamps, and an empty
  target taught only after <|notimestamps|> left text on every non-speech clip in one seed
  of three on the GPU demo (benchmarks/results/card-study-h100-r3/);
- **timestamps** (``preserve.timestamp_share``): ``<|0.00|> text <|end|>`` instead of
  <|notimestamps|> text, the end where the clip's speech ends (an energy trim); with
  ``preserve.timestamp_clips`` above 1, up to that many training clips joined into one
  window with pauses, each clip its own segment. One clip per sample teaches "one segment,
  then <|endoftext|>", and long-form decoding then writes the first sentence of each 30 s
  window and drops the rest (measured: long-form WER 91-96 % after single-clip timestamp
  training on the GPU demo, benchmarks/results/card-study-h100-r3/);
- **prompts** (``preserve.prompt_share``): another training clip's text after
  <|startofprev|> before the transcript, with no loss on the prompt (as Whisper trained);
- **replay** (``data.replay``, prepared by ``replay.py``): another language's clip in place
  of the sample, with its own language token.

Every choice is drawn from a generator seeded by ``(seed, epoch, clip index)`` and a salt
of its own, never from a worker's or the global state: a resumed run, any number of
DataLoader workers and any batch composition see the same samples, so ``--resume`` still
reaches the identical adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio import SAMPLE_RATE, join_with_pauses
from .nonspeech import KINDS, nonspeech_clip
from .processor import MAX_LABEL_TOKENS, TIME_PRECISION

SALT = 0x70726573  # "pres": keeps these draws apart from augment's, seeded by (seed, epoch, index) alone
NO_SPEECH_TOKENS = ("<|nospeech|>", "<|nocaptions|>")  # OpenAI's name (and v3's); HF's v1/v2 conversions'
MAX_PROMPT_TOKENS = 223  # openai/whisper keeps n_text_ctx // 2 - 1 tokens of previous text
MAX_TIMESTAMP_STEP = round(30 / TIME_PRECISION)  # <|30.00|>
TRIM_FRAME = round(TIME_PRECISION * SAMPLE_RATE)  # 320 samples: one timestamp step per energy frame
TRIM_BELOW_PEAK_DB = 40.0  # frames this far below the loudest frame are not speech
TRIM_FLOOR_DB = -60.0  # nor are frames under -60 dBFS, however quiet the clip
MAX_NOISE_CLIPS = 200  # pieces of a noise folder kept in memory (each worker holds them)
JOINED_SECONDS = 28.0  # a joined sample stays inside one 30 s window, with room for augmentation
PAUSE_SECONDS = (0.3, 1.2)  # pauses of low noise (audio.PAUSE_DB) between joined clips
NONSPEECH_TIMESTAMP_SHARE = 0.5  # empty non-speech targets in the time-stamp form (transcribe's)


@dataclass(frozen=True)
class Specials:
    """The special token ids the targets are built from, read from the model's tokenizer."""

    sot: int  # <|startoftranscript|>
    eot: int  # <|endoftext|>
    notimestamps: int  # <|notimestamps|>
    timestamp_begin: int  # <|0.00|>; <|t|> is timestamp_begin + t / 0.02
    startofprev: int  # <|startofprev|>
    nospeech: int  # <|nospeech|> or <|nocaptions|>

    @classmethod
    def of(cls, tokenizer) -> Specials:
        vocab = tokenizer.get_vocab()
        return cls(
            sot=vocab["<|startoftranscript|>"],
            eot=vocab["<|endoftext|>"],
            notimestamps=vocab["<|notimestamps|>"],
            timestamp_begin=vocab["<|0.00|>"],
            startofprev=vocab["<|startofprev|>"],
            nospeech=no_speech_token(tokenizer),
        )


def no_speech_token(tokenizer) -> int:
    """The id of Whisper's no-speech token: OpenAI's vocabulary (and every v3 tokenizer) names it
    <|nospeech|>, the hub's v1/v2 tokenizers <|nocaptions|>; the id is the same slot either way."""
    vocab = tokenizer.get_vocab()
    for name in NO_SPEECH_TOKENS:
        if name in vocab:
            return vocab[name]
    raise ValueError(f"the tokenizer has no no-speech token ({' or '.join(NO_SPEECH_TOKENS)})")


def prefix_length(labels, specials: Specials) -> int:
    """How many leading tokens of ``labels`` are the prefix that ``features.set_prefix`` writes
    (<|startoftranscript|><|lang|><|task|><|notimestamps|>): the transcript follows them."""
    for i, token in enumerate(list(labels)[:4]):
        if token == specials.notimestamps:
            return i + 1
    raise ValueError("labels do not start with the <|startoftranscript|>...<|notimestamps|> prefix")


def no_speech_labels(labels, specials: Specials, target: str, timestamps: bool = False) -> list[int]:
    """The target of a clip without speech: ``nospeech`` is <|startoftranscript|><|nospeech|>
    <|endoftext|> (what Whisper's no_speech_prob reads, at the <|startoftranscript|> position);
    ``empty`` is the clip's own prefix and <|endoftext|> (no text at all), or with
    ``timestamps`` the prefix without <|notimestamps|>, then <|0.00|><|endoftext|>: the time-stamp
    rules make a window's first token a time stamp, and <|endoftext|> may follow it."""
    if target == "nospeech":
        return [specials.sot, specials.nospeech, specials.eot]
    prefix = [int(t) for t in list(labels)[: prefix_length(labels, specials)]]
    if timestamps:
        return prefix[:-1] + [specials.timestamp_begin, specials.eot]
    return prefix + [specials.eot]


def speech_bounds(audio: np.ndarray) -> tuple[float, float]:
    """(start, end) in seconds of the speech in a clip, by an energy trim on 20 ms frames: the
    first and last frame within ``TRIM_BELOW_PEAK_DB`` of the loudest (and above
    ``TRIM_FLOOR_DB``). A clip with no such frame spans its whole length."""
    audio = np.asarray(audio, dtype=np.float32)
    n = audio.size // TRIM_FRAME
    if n == 0:
        return 0.0, audio.size / SAMPLE_RATE
    frames = audio[: n * TRIM_FRAME].reshape(n, TRIM_FRAME).astype(np.float64)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.flatnonzero(db >= max(db.max() - TRIM_BELOW_PEAK_DB, TRIM_FLOOR_DB))
    if loud.size == 0:
        return 0.0, audio.size / SAMPLE_RATE
    return loud[0] * TIME_PRECISION, (loud[-1] + 1) * TIME_PRECISION


def timestamp_labels(labels, specials: Specials, end_s: float) -> list[int]:
    """``labels`` with timestamps: the prefix without <|notimestamps|>, then <|0.00|>, the text
    and <|end_s|> (rounded to 0.02 s, at least <|0.02|>), then <|endoftext|>: one segment,
    the form Whisper's long-form decoding needs it to keep predicting."""
    labels = [int(t) for t in labels]
    cut = prefix_length(labels, specials)
    text = labels[cut:-1] if labels[-1] == specials.eot else labels[cut:]
    steps = min(max(round(end_s / TIME_PRECISION), 1), round(30 / TIME_PRECISION))
    start, end = specials.timestamp_begin, specials.timestamp_begin + steps
    return labels[: cut - 1] + [start, *text, end, specials.eot]


def joined_timestamp_labels(pieces, specials: Specials, spans: list[tuple[float, float]]) -> list[int]:
    """The timestamp target of clips joined into one window: the first piece's prefix without
    <|notimestamps|>, then for each clip ``<|start|> text <|end|>`` at its speech ``spans``
    (seconds in the joined audio, rounded to 0.02 s, kept rising), then <|endoftext|>.
    ``pieces`` are the clips' label ids (each with its own prefix)."""
    first = [int(t) for t in pieces[0]]
    out = first[: prefix_length(first, specials) - 1]
    last = 0
    for labels, (start, end) in zip(pieces, spans):
        labels = [int(t) for t in labels]
        cut = prefix_length(labels, specials)
        text = labels[cut:-1] if labels[-1] == specials.eot else labels[cut:]
        begin = min(max(int(start / TIME_PRECISION), last), MAX_TIMESTAMP_STEP - 1)
        stop = min(max(round(end / TIME_PRECISION), begin + 1), MAX_TIMESTAMP_STEP)
        out += [specials.timestamp_begin + begin, *text, specials.timestamp_begin + stop]
        last = stop
    return out + [specials.eot]


def prompted_rows(prompt: list[int] | None, labels: list[int], ignore: int) -> tuple[list[int], list[int]]:
    """(decoder input, targets) of ``prompt + labels``: the decoder reads everything but the
    last token and predicts everything but the first; the targets of the prompt's tokens and
    of <|startoftranscript|> are ``ignore``, so the loss is on the transcript alone, as in
    Whisper's own training (the prompt is context, never something to write)."""
    prompt = list(prompt or [])
    sequence = prompt + [int(t) for t in labels]
    targets = sequence[1:]
    targets[: len(prompt)] = [ignore] * len(prompt)
    return sequence[:-1], targets


@dataclass(frozen=True)
class Plan:
    """What happens to one training sample (drawn by :meth:`Preserver.plan`)."""

    swap: str | None = None  # "nonspeech" or "replay": the clip is replaced
    timestamps: bool = False
    prompt_row: int | None = None  # the training row whose text is the prompt
    replay_row: int | None = None
    noise_kind: str | None = None  # a nonspeech.KINDS name, or "user" (a piece of noise_dir)
    noise_seed: int = 0
    joined: tuple[int, ...] = ()  # training rows joined after the clip (a timestamp sample)
    pause_seed: int = 0


@dataclass
class Preserver:
    """The preserving switches of a run, applied by the training collator
    (``features.SpeechCollator``): :meth:`swap` before augmentation, :meth:`targets` after it
    (timestamps follow the clip as augmented). Built by :meth:`from_settings`, None when every
    share is 0. Picklable, so DataLoader workers carry it."""

    seed: int
    specials: Specials
    nonspeech_share: float = 0.0
    nonspeech_target: str = "empty"
    timestamp_share: float = 0.0
    timestamp_clips: int = 1
    prompt_share: float = 0.0
    replay_share: float = 0.0
    tokenizer: object = None  # encodes the prompts' texts
    texts: list[str] = field(default_factory=list)  # the training split's transcripts, for prompts
    replay: object = None  # the replayed split's rows (audio, labels), numpy-formatted
    noise: list[np.ndarray] = field(default_factory=list)  # pieces of the user's noise folder
    rows: object = None  # the training split's rows (audio, labels), numpy-formatted: joined timestamp samples

    @classmethod
    def from_settings(cls, settings, seed: int, tokenizer, texts=(), replay=None, replay_share: float = 0.0, rows=None):
        """The Preserver of ``settings`` (a ``config.PreserveSettings``), or None when nothing
        is switched on. A wrong ``noise_dir`` fails here, named, not later in a worker.
        ``rows``: the training split (audio, labels), for timestamp samples of joined clips
        (without it, each timestamp sample is its clip alone)."""
        shares = (settings.nonspeech_share, settings.timestamp_share, settings.prompt_share, replay_share)
        if not any(shares):
            return None
        noise = []
        if settings.noise_dir and settings.nonspeech_share:
            from .nonspeech import noise_folder_clips

            noise = [c.audio for c in noise_folder_clips(settings.noise_dir, seed)[:MAX_NOISE_CLIPS]]
        return cls(
            seed=seed,
            specials=Specials.of(tokenizer),
            nonspeech_share=settings.nonspeech_share,
            nonspeech_target=settings.nonspeech_target,
            timestamp_share=settings.timestamp_share,
            timestamp_clips=settings.timestamp_clips if rows is not None and len(rows) > 1 else 1,
            prompt_share=settings.prompt_share,
            replay_share=replay_share if replay is not None else 0.0,
            tokenizer=tokenizer if settings.prompt_share else None,
            texts=list(texts) if settings.prompt_share else [],
            replay=replay,
            noise=noise,
            rows=rows if settings.timestamp_share and settings.timestamp_clips > 1 else None,
        )

    def plan(self, index: int, epoch: int) -> Plan:
        """The plan of clip ``index`` in ``epoch``: a pure function of (seed, epoch, index).
        Every draw is always taken, so one switch's share never moves another's choices."""
        rng = np.random.default_rng([self.seed, int(epoch), int(index), SALT])
        swap_u, stamp_u, prompt_u, user_u = rng.random(4)
        kind, noise_seed = KINDS[rng.integers(len(KINDS))], int(rng.integers(2**63 - 1))
        replay_at, prompt_at = rng.random(2)
        extra, pause_seed = rng.random(), int(rng.integers(2**63 - 1))  # drawn last: earlier draws stay as they were
        others = rng.random(max(self.timestamp_clips - 1, 0))
        swap = None
        if swap_u < self.nonspeech_share:
            swap = "nonspeech"
        elif swap_u < self.nonspeech_share + self.replay_share:
            swap = "replay"
        if swap == "nonspeech":  # half of the empty targets in the time-stamp form, whatever timestamp_share says
            stamped = self.nonspeech_target == "empty" and stamp_u < NONSPEECH_TIMESTAMP_SHARE
            noise_kind = "user" if self.noise and user_u < 0.5 else kind
            return Plan("nonspeech", stamped, noise_kind=noise_kind, noise_seed=noise_seed)
        prompt_row = None
        if swap is None and prompt_u < self.prompt_share and len(self.texts) > 1:
            prompt_row = int(prompt_at * (len(self.texts) - 1))
            prompt_row += prompt_row >= index  # another clip's text, never the clip's own
        replay_row = int(replay_at * len(self.replay)) if swap == "replay" else None
        stamped = stamp_u < self.timestamp_share
        joined = ()
        if stamped and swap is None and prompt_row is None and self.timestamp_clips > 1:
            n = int(extra * self.timestamp_clips)  # 0 to timestamp_clips - 1 clips after this one
            joined = tuple(int(u * len(self.rows)) for u in others[:n])
        return Plan(swap, stamped, prompt_row, replay_row, joined=joined, pause_seed=pause_seed)

    def swap(self, examples: list[dict]) -> list[dict]:
        """The examples with their plan (``"plan"``); a replay plan replaces the audio and
        labels, a non-speech plan the audio (as long as the clip it replaces; :meth:`targets`
        writes every target, the no-speech one included)."""
        out = []
        for e in examples:
            plan = self.plan(e["index"], e["epoch"])
            e = e | {"plan": plan}
            if plan.swap == "nonspeech":
                e |= {"audio": self._noise(plan, len(e["audio"]))}  # its target: targets()
            elif plan.swap == "replay":
                row = self.replay[plan.replay_row]
                e |= {"audio": row["audio"], "labels": row["labels"]}
            elif plan.joined:
                e |= self._join(e, plan)
            out.append(e)
        return out

    def _join(self, e: dict, plan: Plan) -> dict:
        """The clip with ``plan.joined``'s clips after it, pauses of low noise between, as long
        as the whole stays within ``JOINED_SECONDS`` and its labels within Whisper's 448
        tokens: the audio, each clip's labels (``"pieces"``) and its speech span in seconds
        (``"spans"``), for :meth:`targets`."""
        rng = np.random.default_rng(plan.pause_seed)
        audio, labels = np.asarray(e["audio"], dtype=np.float32), [int(t) for t in e["labels"]]
        clips, gaps, pieces = [audio], [0], [labels]
        at, tokens = audio.size, len(labels)
        for row in plan.joined:
            clip, more = self.rows[row]["audio"].astype(np.float32), [int(t) for t in self.rows[row]["labels"]]
            gap = round(rng.uniform(*PAUSE_SECONDS) * SAMPLE_RATE)
            if (at + gap + clip.size) / SAMPLE_RATE > JOINED_SECONDS or tokens + len(more) > MAX_LABEL_TOKENS:
                break
            clips.append(clip)
            gaps.append(gap)
            pieces.append(more)
            at, tokens = at + gap + clip.size, tokens + len(more)
        joined, starts = join_with_pauses(clips, gaps, rng)
        spans = []
        for start, clip in zip(starts, clips):
            first, last = speech_bounds(clip)
            spans.append((start / SAMPLE_RATE + first, start / SAMPLE_RATE + last))
        return {"audio": joined, "pieces": pieces, "spans": spans}

    def _noise(self, plan: Plan, n: int) -> np.ndarray:
        seconds = max(n, TRIM_FRAME) / SAMPLE_RATE
        if plan.noise_kind != "user":
            return nonspeech_clip(plan.noise_kind, seconds, plan.noise_seed).audio
        rng = np.random.default_rng(plan.noise_seed)
        clip = self.noise[rng.integers(len(self.noise))]
        want = round(seconds * SAMPLE_RATE)
        start = int(rng.integers(len(clip)))
        return np.tile(clip, -(-want // len(clip)) + 1)[start : start + want]

    def targets(self, examples: list[dict], audios: list[np.ndarray]) -> list[tuple[list[int] | None, list[int]]]:
        """(prompt or None, labels) of each example after :meth:`swap`; ``audios`` are the
        clips as augmented, whose speech bounds set the end timestamps."""
        rows = []
        for e, audio in zip(examples, audios):
            plan, labels = e.get("plan") or Plan(), [int(t) for t in e["labels"]]
            if plan.swap == "nonspeech":
                labels = no_speech_labels(labels, self.specials, self.nonspeech_target, plan.timestamps)
            elif "spans" in e:  # joined clips: times scale with the augmented audio (a speed change)
                scale = len(audio) / max(len(e["audio"]), 1)
                spans = [(start * scale, end * scale) for start, end in e["spans"]]
                labels = joined_timestamp_labels(e["pieces"], self.specials, spans)
            elif plan.timestamps and len(labels) < MAX_LABEL_TOKENS:  # one token longer: it must still fit
                labels = timestamp_labels(labels, self.specials, speech_bounds(audio)[1])
            prompt = self.prompt(plan.prompt_row, len(labels)) if plan.prompt_row is not None else None
            rows.append((prompt, labels))
        return rows

    def prompt(self, row: int, label_length: int) -> list[int] | None:
        """<|startofprev|> and the text of training row ``row`` (" " + text, as openai/whisper's
        ``initial_prompt`` and transformers' ``get_prompt_ids`` encode it), cut from the left
        to ``MAX_PROMPT_TOKENS`` and to what fits beside the labels in 448 positions."""
        room = min(MAX_PROMPT_TOKENS, MAX_LABEL_TOKENS - label_length)
        if room <= 0:
            return None
        ids = self.tokenizer.encode(" " + str(self.texts[row]).strip(), add_special_tokens=False)
        return [self.specials.startofprev, *ids[-room:]]
