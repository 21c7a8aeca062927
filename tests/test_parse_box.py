"""parse_box on realistic and hostile model outputs, coordinate systems, and the never-raises property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_core.boxes import parse_box

B = (10.0, 20.0, 30.0, 40.0)

# (id, text, expected box or None); coords="pixels"
CORPUS = [
    # --- realistic Qwen2.5-VL / VLM-R1 outputs
    (
        "vlmr1",
        '<think>The lesion is central.</think><answer>{"bbox_2d": [10, 20, 30, 40], "label": "lesion"}</answer>',
        B,
    ),
    (
        "vlmr1-newlines",
        '<think>\nround dark area\n</think>\n<answer>\n{"bbox_2d": [10, 20, 30, 40], "label": "lesion"}\n</answer>',
        B,
    ),
    (
        "list-of-objects",
        '<answer>[{"bbox_2d": [10, 20, 30, 40], "label": "a"}, {"bbox_2d": [1, 2, 3, 4], "label": "b"}]</answer>',
        B,
    ),
    ("answer-only", '<answer>{"bbox_2d": [10, 20, 30, 40]}</answer>', B),
    ("no-tags-json", '{"bbox_2d": [10, 20, 30, 40], "label": "nodule"}', B),
    ("code-fence", '```json\n[\n  {"bbox_2d": [10, 20, 30, 40], "label": "nodule"}\n]\n```', B),
    ("fence-in-answer", '<think>ok</think><answer>```json\n{"bbox_2d": [10, 20, 30, 40]}\n```</answer>', B),
    ("floats", '<answer>{"bbox_2d": [10.0, 20.0, 30.0, 40.0]}</answer>', B),
    (
        "float-fractions",
        '<answer>{"bbox_2d": [10.25, 20.5, 30.75, 40.125]}</answer>',
        (10.25, 20.5, 30.75, 40.125),
    ),
    ("bbox-key", '{"bbox": [10, 20, 30, 40]}', B),
    ("box-key", "{'box': [10, 20, 30, 40]}", B),
    ("single-quotes", "<answer>{'bbox_2d': [10, 20, 30, 40], 'label': 'lesion'}</answer>", B),
    ("bare-list", "<answer>[10, 20, 30, 40]</answer>", B),
    ("bare-list-spaces", "<answer>[ 10 20 30 40 ]</answer>", B),
    ("nested-list-spaces", '<answer>{"bbox_2d": [ [10, 20, 30, 40] ]}</answer>', B),
    ("mixed-separators", "<answer>[10 ,20 , 30\t40]</answer>", B),
    ("nested-list", '<answer>{"bbox_2d": [[10, 20, 30, 40]]}</answer>', B),
    ("prose-around", "Sure! The nodule is located at [10, 20, 30, 40] in the image.", B),
    ("prose-in-answer", '<answer>The box is {"bbox_2d": [10, 20, 30, 40]} I think.</answer>', B),
    ("swapped-corners", '{"bbox_2d": [30, 40, 10, 20]}', B),
    ("swapped-x-only", '{"bbox_2d": [30, 20, 10, 40]}', B),
    ("negative", '{"bbox_2d": [-5, -3, 30, 40]}', (-5.0, -3.0, 30.0, 40.0)),
    ("exponent", '{"bbox_2d": [1e1, 2e1, 3.0e1, 4E1]}', B),
    ("quoted-numbers", '{"bbox_2d": ["10", "20", "30", "40"]}', B),
    ("trailing-comma", '{"bbox_2d": [10, 20, 30, 40,]}', B),
    ("unclosed-answer", '<think>hmm</think><answer>{"bbox_2d": [10, 20, 30, 40]', B),
    ("upper-tags", '<ANSWER>{"bbox_2d": [10, 20, 30, 40]}</ANSWER>', B),
    ("qwen2-points", "<|box_start|>(10,20),(30,40)<|box_end|>", B),
    ("paren-tuple", "<answer>(10, 20, 30, 40)</answer>", B),
    ("corner-keys", '<answer>{"x1": 10, "y1": 20, "x2": 30, "y2": 40}</answer>', B),
    ("first-valid-object", '<answer>[{"bbox_2d": [1, 2, 3]}, {"bbox_2d": [10, 20, 30, 40]}]</answer>', B),
    (
        "key-beats-earlier-list",
        '<answer>size [640, 480, 3, 1] then {"bbox_2d": [10, 20, 30, 40]}</answer>',
        B,
    ),
    ("zero-area-parses", '{"bbox_2d": [10, 20, 10, 40]}', (10.0, 20.0, 10.0, 40.0)),
    (
        "answer-scope-wins",
        '<think>maybe [1, 2, 3, 4]</think><answer>{"bbox_2d": [10, 20, 30, 40]}</answer>',
        B,
    ),
    (
        "instruction-echo-in-think",
        "<think>I must answer in <answer> </answer> tags.</think><answer>[10, 20, 30, 40]</answer>",
        B,
    ),
    ("first-answer-block", "<answer>[10, 20, 30, 40]</answer><answer>[1, 2, 3, 4]</answer>", B),
    # --- hostile or empty: None
    ("empty", "", None),
    ("whitespace", "   \n\t ", None),
    ("prose-only", "I cannot find any lesion in this image.", None),
    ("think-only", "<think>The nodule is at [10, 20, 30, 40]</think>", B),  # no answer block: whole text
    ("answer-without-box", "<think>[10, 20, 30, 40]</think><answer>no finding</answer>", None),
    ("three-numbers", '{"bbox_2d": [10, 20, 30]}', None),
    ("five-numbers", '{"bbox_2d": [10, 20, 30, 40, 50]}', None),
    ("nan", '{"bbox_2d": [NaN, 20, 30, 40]}', None),
    ("infinity", '{"bbox_2d": [Infinity, 20, 30, 40]}', None),
    ("overflow", '{"bbox_2d": [1e999, 20, 30, 40]}', None),
    ("words-in-list", '{"bbox_2d": ["x1", "y1", "x2", "y2"]}', None),
    ("placeholder", '{"bbox_2d": [x1, y1, x2, y2], "label": "..."}', None),
    ("truncated", '<answer>{"bbox_2d": [10, 20, 3', None),
    ("only-braces", "{}{}[[[]]]", None),
    ("unbalanced", "[[[[[[[[[[[[[[[[[[[[[[[", None),
    ("numbers-in-prose", "The image is 640 by 480 and the lesion is 3 cm wide, about 12 mm deep.", None),
    ("dict-not-list", '{"bbox_2d": {"a": 1, "b": 2, "c": 3, "d": 4}}', None),
    ("empty-answer", '<answer></answer>{"bbox_2d": [10, 20, 30, 40]}', None),
    ("control-chars", "\x00\x01\x02<answer>\x7f</answer>", None),
    ("unicode", "病变位于 ［10，20，30，40］", None),  # full-width brackets and commas are not accepted
]


@pytest.mark.parametrize("text,expected", [(t, e) for _, t, e in CORPUS], ids=[i for i, _, _ in CORPUS])
def test_parse_box_corpus(text, expected):
    got = parse_box(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)
        assert isinstance(got, tuple) and all(isinstance(v, float) for v in got)


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 40
    assert sum(1 for *_, e in CORPUS if e is None) >= 15


@pytest.mark.parametrize(
    "value", [None, 123, 1.5, b'{"bbox_2d": [1, 2, 3, 4]}', ["[1,2,3,4]"], {"bbox": [1, 2, 3, 4]}]
)
def test_non_str_input_is_none(value):
    assert parse_box(value) is None


@pytest.mark.parametrize(
    "text,coords,w,h,expected",
    [
        ('{"bbox_2d": [0.1, 0.2, 0.5, 0.8]}', "norm1", 200, 100, (20.0, 20.0, 100.0, 80.0)),
        ('{"bbox_2d": [100, 200, 500, 800]}', "norm1000", 200, 100, (20.0, 20.0, 100.0, 80.0)),
        ("(100,200),(500,800)", "norm1000", 1000, 1000, (100.0, 200.0, 500.0, 800.0)),
        ('{"bbox_2d": [0.5, 0.8, 0.1, 0.2]}', "norm1", 200, 100, (20.0, 20.0, 100.0, 80.0)),
        ('{"bbox_2d": [10, 20, 30, 40]}', "pixels", None, None, B),
    ],
)
def test_coordinate_systems(text, coords, w, h, expected):
    assert parse_box(text, coords=coords, width=w, height=h) == pytest.approx(expected)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="coords"):
        parse_box("[1, 2, 3, 4]", coords="percent")
    with pytest.raises(ValueError, match="width and height"):
        parse_box("[1, 2, 3, 4]", coords="norm1")


def test_returned_box_is_ordered():
    x1, y1, x2, y2 = parse_box("[40, 30, 20, 10]")
    assert x1 <= x2 and y1 <= y2


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_never_raises_on_any_text(text):
    got = parse_box(text)
    assert got is None or (len(got) == 4 and got[0] <= got[2] and got[1] <= got[3])


json_like = st.text(alphabet="<>/answerthinkbox_2d{}[]()\"':,.-+eE0123456789 \nNaInfity", max_size=200)


@settings(max_examples=500, deadline=None)
@given(json_like, st.sampled_from(["pixels", "norm1", "norm1000"]))
def test_never_raises_on_json_like_text(text, coords):
    got = parse_box(text, coords=coords, width=640, height=480)
    if got is not None:
        assert all(math.isfinite(v) for v in got)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-1000, 5000), min_size=4, max_size=4), st.sampled_from(["bbox_2d", "bbox", "box"])
)
def test_generated_answers_round_trip(coords, key):
    text = f'<think>x</think><answer>{{"{key}": {coords}, "label": "lesion"}}</answer>'
    x1, y1, x2, y2 = coords
    assert parse_box(text) == (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 20000 + "1, 2, 3" + "(" * 20000 + "bbox_2d: " * 2000,
        '{"bbox_2d": [' + " " * 50000 + "x",
        "[1" + " " * 50000 + "x]",
        "(1, 2)" + " " * 50000 + "x",
        "<answer>" * 5000,
        "1, " * 30000,
    ],
    ids=["brackets", "key-spaces", "list-spaces", "pair-spaces", "answers", "numbers"],
)
def test_hostile_long_input_is_fast(text):
    import time

    t0 = time.perf_counter()
    assert parse_box(text) is None
    assert time.perf_counter() - t0 < 1.0
