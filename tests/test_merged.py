"""The busiest adapter's merged copy (``inference/merged.py``): made for the adapter most
requests ask for, the same text as unmerged, the shared model never written to, and no copy
where memory does not allow one."""

import pytest
import torch

from whisper_tune.audio import load_audio
from whisper_tune.inference import DecodingOptions, merged, open_engine

CPU = torch.device("cpu")
GREEDY = DecodingOptions.greedy()  # the random model would run every fallback temperature


@pytest.fixture(scope="module")
def adapters(tiny_adapter, other_adapter) -> dict[str, str]:
    return {"mr": str(tiny_adapter), "hi": str(other_adapter)}


@pytest.fixture(scope="module")
def audios(small_corpus):
    return [load_audio(c) for c in sorted((small_corpus / "clips").glob("*.mp3"))[:2]]


@pytest.fixture(scope="module")
def unmerged(adapters):
    """The same two adapters, always unmerged: the answers to match."""
    return open_engine(adapters=adapters, device=CPU, decoding=GREEDY)


def test_the_busiest_adapter_is_decoded_merged_with_the_same_text(adapters, audios, unmerged):
    engine = open_engine(adapters=adapters, device=CPU, decoding=GREEDY, merge_busiest=True)
    engine.merged.least = 2
    shared = {k: v.clone() for k, v in engine.held.state_dict().items()}
    asks = ["mr", "mr", "hi", "mr", "hi", "hi", "hi", "mr"]
    texts, copies = [], []
    for i, name in enumerate(asks):
        texts.append(engine.transcript(audios[i % 2], adapter=name).text)
        copies.append(engine.merged.name if engine.model is engine.merged.model else None)
    # mr is merged once asked twice; a tie keeps it; hi takes the copy once it has more requests
    assert copies == [None, "mr", None, "mr", None, None, "hi", None]
    expected = [unmerged.transcript(audios[i % 2], adapter=name).text for i, name in enumerate(asks)]
    assert texts == expected
    assert len(set(expected)) > 1  # the adapters (and clips) say different things
    assert type(engine.merged.model.model.decoder.layers[0].fc1) is torch.nn.Linear  # merged, no LoRA branch
    assert not engine.batched(GREEDY, samples=16000)  # the copy decodes as the shared model does
    for key, value in engine.held.state_dict().items():  # the shared base and adapters were never written to
        assert torch.equal(value, shared[key]), key
    with engine.base_only(), unmerged.base_only():
        assert engine.model is engine.held
        assert engine.transcript(audios[0]).text == unmerged.transcript(audios[0]).text


def test_no_copy_where_memory_does_not_allow_one(adapters, audios, unmerged, monkeypatch):
    monkeypatch.setattr(merged, "free_bytes", lambda device: 1 << 20)
    engine = open_engine(adapters=adapters, device=CPU, decoding=GREEDY, merge_busiest=True)
    texts = [engine.transcript(audios[0], adapter="hi").text for _ in range(merged.LEAST)]
    assert engine.merged.model is None and engine.model is engine.held
    assert "hi stays unmerged: a merged copy needs" in engine.merged.declined
    assert texts == [unmerged.transcript(audios[0], adapter="hi").text] * merged.LEAST
