"""The n-gram model of a training text: each context's distribution sums to 1 over the text
tokens and the end, the file round-trips, and a file that is not one is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from whisper_tune.errors import UserError
from whisper_tune.text_lm import NgramLM, build_lm, read_sentences, token_sentences

SENTENCES = ["आज हवा छान आहे.", "आज सकाळपासून पाऊस पडत आहे.", "आजी मला गोष्ट सांगते.", "the cat sat on the mat"]


@pytest.fixture()
def lm(tokenizer):
    return build_lm(tokenizer, SENTENCES, order=4)


def test_every_context_is_a_distribution_over_text_tokens_and_the_end(lm, tokenizer):
    ids = token_sentences(tokenizer, SENTENCES)
    contexts = [[], ids[0][:1], ids[0][:5], ids[1], ids[3][:3], [7, 7, 7, 7, 7], [50000]]
    for context in contexts:
        p = lm.distribution(context)
        assert p.shape == (tokenizer.convert_tokens_to_ids("<|endoftext|>") + 1,)
        assert np.all(p > 0) and abs(p.sum() - 1.0) < 1e-9, context


def test_it_learns_the_text_and_where_it_ends(lm, tokenizer):
    ids = token_sentences(tokenizer, SENTENCES)[2]
    assert lm.perplexity([ids]) < lm.perplexity([list(reversed(ids))]) / 10
    one = build_lm(tokenizer, [SENTENCES[2]] * 3, order=4)  # one sentence: its tokens are each first choice
    for i, token in enumerate(ids):
        assert int(np.argmax(one.distribution(ids[:i]))) == token
    assert int(np.argmax(one.distribution(ids))) == one.eos


def test_the_file_round_trips(lm, tmp_path, tokenizer):
    back = NgramLM.load(lm.save(tmp_path / "lm.json"))
    context = token_sentences(tokenizer, SENTENCES)[0][:3]
    assert np.array_equal(back.distribution(context), lm.distribution(context))
    back.check_tokenizer(tokenizer)


@pytest.mark.parametrize(
    "body, words",
    [
        ("not json {", "not JSON"),
        ('{"hello": 1}', "not a whisper-tune language model"),
        ('{"format": "whisper-tune-ngram", "version": 99}', "version 99"),
        ('{"format": "whisper-tune-ngram", "version": 1, "order": 2}', "damaged"),
    ],
)
def test_a_bad_file_is_refused_in_one_line(tmp_path, body, words):
    path = tmp_path / "lm.json"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(UserError, match=words) as e:
        NgramLM.load(path)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        NgramLM.load(tmp_path / "missing.json")


def test_out_of_range_counts_are_refused(lm, tmp_path):
    body = json.loads(lm.save(tmp_path / "lm.json").read_text(encoding="utf-8"))
    body["tables"][0][""] = {"99999999": 1}
    (tmp_path / "lm.json").write_text(json.dumps(body), encoding="utf-8")
    with pytest.raises(UserError, match="damaged"):
        NgramLM.load(tmp_path / "lm.json")


def test_another_vocabulary_is_refused(lm, tokenizer):
    lm.probe = [1, 2, 3]
    with pytest.raises(UserError, match="another tokenizer"):
        lm.check_tokenizer(tokenizer)


def test_bad_orders_and_texts_are_refused(tokenizer, tmp_path):
    with pytest.raises(UserError, match="order"):
        build_lm(tokenizer, SENTENCES, order=0)
    with pytest.raises(UserError, match="no sentences"):
        build_lm(tokenizer, ["  ", ""], order=3)
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="no sentences"):
        read_sentences(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_sentences(tmp_path / "latin1.txt")


def test_build_lm_command_writes_a_model_of_the_split(small_corpus, tmp_path, capsys):
    from whisper_tune.cli import main

    out = tmp_path / "lm.json"
    assert main(["build-lm", "--data", str(small_corpus), "--split", "train", "--out", str(out), "--order", "3"]) == 0
    lm = NgramLM.load(out)
    assert lm.order == 3 and lm.sentences > 0 and "wrote a 3-gram model" in capsys.readouterr().out
    assert main(["build-lm", "--out", str(tmp_path / "x.json")]) == 2
    assert main(["build-lm", "--text", str(tmp_path / "none.txt"), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--data DIR" in err[0] and "not found" in err[1]
