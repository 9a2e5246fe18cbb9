"""Slices of a split (``validated[:80%]``): speakers kept whole, every row once, the same on
every call; on synthetic rows and on the real Common Voice sample where it is present."""

import random
from pathlib import Path

import pytest

from whisper_tune.errors import UserError
from whisper_tune.slices import Bound, SplitPart, parse_part, take
from whisper_tune.sources import Row, open_source

CV_SAMPLE = Path(__file__).parents[1].parent / "shared" / "data" / "cv61-sample"
SLICES = ["[:80%]", "[80%:]"]


def _rows(n_speakers=23, seed=0, speakers=True):
    rng = random.Random(seed)
    rows = []
    for s in range(n_speakers):
        for k in range(rng.choice([1, 1, 2, 3, 7, 16])):
            rows.append(
                Row(id=f"c{s}_{k}", audio=f"/clips/c{s}_{k}.mp3", text="x", speaker=f"spk{s}" if speakers else None)
            )
    rng.shuffle(rows)
    return rows


def _cut(rows, *slices):
    return [take(rows, parse_part(f"validated{s}"), "here") for s in slices]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("bounds", [SLICES, ["[:50%]", "[50%:90%]", "[90%:]"], ["[:10]", "[10:-10%]", "[-10%:]"]])
def test_slices_are_disjoint_cover_everything_and_keep_speakers_whole(seed, bounds):
    rows = _rows(seed=seed)
    parts = _cut(rows, *bounds)
    ids = [r.id for part in parts for r in part]
    assert sorted(ids) == sorted(r.id for r in rows)  # every row exactly once
    speakers = [{r.speaker for r in part} for part in parts]
    assert sum(len(s) for s in speakers) == len(set().union(*speakers))  # no speaker on two sides


def test_a_slice_is_near_its_percent_and_in_file_order():
    rows = _rows(n_speakers=200, seed=1)
    train, test = _cut(rows, *SLICES)
    assert abs(len(train) - 0.8 * len(rows)) <= 16  # within the biggest speaker's clips of the bound
    order = {r.id: i for i, r in enumerate(rows)}
    assert [order[r.id] for r in test] == sorted(order[r.id] for r in test)


def test_slices_do_not_depend_on_row_order_and_repeat():
    rows = _rows(seed=2)
    test = {r.id for r in _cut(rows, "[80%:]")[0]}
    assert test == {r.id for r in _cut(list(reversed(rows)), "[80%:]")[0]} == {r.id for r in _cut(rows, "[80%:]")[0]}


def test_rows_without_speakers_slice_like_hugging_face():
    rows = _rows(n_speakers=10, speakers=False)
    n = len(rows)
    head, tail = _cut(rows, "[:30%]", "[30%:]")
    assert head + tail == rows and len(head) == round(0.3 * n)


@pytest.mark.parametrize(
    "text, part",
    [
        ("validated", SplitPart("validated", text="validated")),
        ("validated[:80%]", SplitPart("validated", None, Bound(80, True), "validated[:80%]")),
        (" validated [ 80% : ] ", SplitPart("validated", Bound(80, True), None, "validated [ 80% : ]")),
        ("train[-10:]", SplitPart("train", Bound(-10, False), None, "train[-10:]")),
    ],
)
def test_parse_part(text, part):
    assert parse_part(text) == part


@pytest.mark.parametrize(
    "bad, says",
    [
        ("validated[80%]", "is not a split name or slice"),
        ("validated[:80.5%]", "has the bound '80.5%'"),
        ("validated[:120%]", "beyond 100%"),
        ("validated[a:b]", "has the bound 'a'"),
        ("validated[:80%", "is not a split name or slice"),
        ("validated[1:2:3]", "is not a split name or slice"),
    ],
)
def test_slice_syntax_errors_are_one_line_saying_how(bad, says):
    with pytest.raises(UserError, match=r"write NAME\[START:STOP\]") as e:
        parse_part(bad)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_an_empty_slice_is_an_error_not_an_empty_split():
    rows = [Row(id=f"a{i}", audio=f"a{i}.mp3", text="x", speaker="one") for i in range(5)]
    with pytest.raises(UserError, match=r"holds no clips \(5 clips in 1 speakers .*widen the slice"):
        take(rows, parse_part("validated[90%:]"), "here")
    with pytest.raises(UserError, match="holds no clips"):
        take(_rows(), parse_part("validated[50%:50%]"), "here")


def test_common_voice_slices_through_the_source(tmp_path):
    (tmp_path / "clips").mkdir()
    lines = ["client_id\tpath\tsentence"] + [f"spk{i % 7}\tc{i}.mp3\tword {i}" for i in range(40)]
    (tmp_path / "validated.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    src = open_source(str(tmp_path))
    train, test = list(src.rows("validated[:80%]")), list(src.rows("validated[80%:]"))
    assert src.count("validated[80%:]") == len(test) and len(train) + len(test) == 40
    assert not {r.speaker for r in train} & {r.speaker for r in test}
    assert [r.id for r in src.rows("validated[80%:]+validated[:80%]")] == [r.id for r in test + train]
    with pytest.raises(UserError, match="split 'test' is not in"):
        src.check_split("test[:80%]")


@pytest.mark.skipif(not CV_SAMPLE.is_dir(), reason="the shared Common Voice sample (../shared) is not here")
@pytest.mark.parametrize("language", ["mn", "vi", "ka"])
def test_real_common_voice_sample_splits_by_speaker(language):
    src = open_source(str(CV_SAMPLE / language), language=language)
    train, test = list(src.rows("validated[:80%]")), list(src.rows("validated[80%:]"))
    assert len(train) + len(test) == 100 and {r.id for r in train}.isdisjoint(r.id for r in test)
    assert all(r.speaker for r in train + test)
    assert not {r.speaker for r in train} & {r.speaker for r in test}
    assert 10 <= len(test) <= 30  # whole speakers move the 80% bound by at most one speaker's clips


def test_slices_have_distinct_plain_folder_names():
    from whisper_tune.slices import folder_name

    names = [folder_name(f"validated{s}") for s in ["", "[:80%]", "[80%:]", "[:80]", "[80:]"]]
    assert len(set(names)) == len(names)
    assert not any(set(n) & set("[]:% ") for n in names)
