"""IoU (scalar and vectorized), clipping, smart_resize and original <-> model-input frames."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medloc_core.boxes import (
    Frame,
    box_area,
    clip_box,
    iou,
    iou_matrix,
    iou_pairs,
    normalize_box,
    smart_resize,
)

coord = st.floats(min_value=-500, max_value=2000, allow_nan=False, allow_infinity=False)


@st.composite
def boxes(draw):
    x1, x2 = sorted((draw(coord), draw(coord)))
    y1, y2 = sorted((draw(coord), draw(coord)))
    return (x1, y1, x2, y2)


# ------------------------------------------------------------------------------------------------ iou

IOU_CASES = [
    # a, b, expected
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),  # identity
    ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),  # disjoint
    ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges: zero-area intersection
    ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),  # half overlap
    ((0, 0, 10, 10), (2, 2, 7, 7), 25 / 100),  # containment = area ratio
    ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),
    ((0, 0, 2, 1), (1, 0, 3, 1), 1 / 3),
    ((0.5, 0.5, 1.5, 1.5), (1.0, 1.0, 2.0, 2.0), 0.25 / 1.75),  # continuous coordinates
    ((-10, -10, 0, 0), (-5, -5, 5, 5), 25 / 175),  # negative coordinates
    ((5, 5, 5, 5), (5, 5, 5, 5), 0.0),  # two degenerate boxes: union 0
    ((5, 5, 5, 9), (0, 0, 10, 10), 0.0),  # zero-width box scores 0
    ((10, 10, 0, 0), (0, 0, 10, 10), 0.0),  # inverted box has area 0
    ((0, 0, float("nan"), 10), (0, 0, 10, 10), 0.0),  # NaN -> 0, not NaN
]


@pytest.mark.parametrize("a,b,expected", IOU_CASES)
def test_iou_table(a, b, expected):
    assert iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert iou(b, a) == pytest.approx(expected, abs=1e-12)
    got = iou_pairs(np.array([a], float), np.array([b], float))
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(boxes(), boxes())
def test_iou_properties(a, b):
    v = iou(a, b)
    assert 0.0 <= v <= 1.0
    assert v == iou(b, a)
    if box_area(a) > 0:
        assert iou(a, a) == pytest.approx(1.0)
    vec = iou_pairs(np.array([a]), np.array([b]))[0]
    assert vec == pytest.approx(v, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(boxes(), st.floats(0.05, 0.95), st.floats(0.05, 0.95), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_iou_containment_is_area_ratio(outer, fw, fh, ox, oy):
    x1, y1, x2, y2 = outer
    w, h = x2 - x1, y2 - y1
    if w < 1e-3 or h < 1e-3:
        return
    iw, ih = w * fw, h * fh
    ix1, iy1 = x1 + (w - iw) * ox, y1 + (h - ih) * oy
    inner = (ix1, iy1, ix1 + iw, iy1 + ih)
    assert iou(outer, inner) == pytest.approx(box_area(inner) / box_area(outer), rel=1e-6)


def test_iou_matrix_matches_scalar():
    rng = np.random.default_rng(0)
    a = _random_boxes(rng, 17)
    b = _random_boxes(rng, 11)
    m = iou_matrix(a, b)
    assert m.shape == (17, 11)
    expected = np.array([[iou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(m, expected, atol=1e-12)
    np.testing.assert_allclose(iou_pairs(a[:11], b), np.diag(expected[:11]), atol=1e-12)


def test_iou_vector_shapes_are_checked():
    with pytest.raises(ValueError, match="shape"):
        iou_pairs(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="same number"):
        iou_pairs(np.zeros((3, 4)), np.zeros((2, 4)))
    assert iou_matrix(np.zeros((0, 4)), np.zeros((5, 4))).shape == (0, 5)


def _random_boxes(rng, n):
    xy = rng.uniform(0, 500, size=(n, 2))
    wh = rng.uniform(0, 200, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_iou_pairs_million_is_fast():
    rng = np.random.default_rng(1)
    a, b = _random_boxes(rng, 1_000_000), _random_boxes(rng, 1_000_000)
    iou_pairs(a[:10], b[:10])
    best = min(_timed(iou_pairs, a, b) for _ in range(3))
    # Typically 60-70 ms on one free core; the bound leaves room for a loaded CI machine and still catches a
    # per-pair Python loop (several seconds).
    assert best < 0.5, f"iou_pairs on 1e6 pairs took {best:.3f} s"
    out = iou_pairs(a, b)
    idx = rng.integers(0, 1_000_000, size=50)
    assert [round(out[i], 12) for i in idx] == [round(iou(a[i], b[i]), 12) for i in idx]


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# -------------------------------------------------------------------------------------- clip / normalize


@pytest.mark.parametrize(
    "box,w,h,expected",
    [
        ((10, 20, 30, 40), 100, 100, (10, 20, 30, 40)),
        ((-5, -5, 50, 50), 40, 30, (0, 0, 40, 30)),
        ((120, 5, 130, 10), 100, 100, (100, 5, 100, 10)),
        ((0.5, 0.5, 99.5, 99.9), 100, 100, (0.5, 0.5, 99.5, 99.9)),
    ],
)
def test_clip_box(box, w, h, expected):
    assert clip_box(box, w, h) == pytest.approx(expected)


def test_clip_box_rejects_bad_size():
    with pytest.raises(ValueError, match="positive"):
        clip_box((0, 0, 1, 1), 0, 10)


def test_normalize_box_swaps_corners():
    assert normalize_box((30, 40, 10, 20)) == (10.0, 20.0, 30.0, 40.0)
    assert normalize_box((10, 40, 30, 20)) == (10.0, 20.0, 30.0, 40.0)


# ------------------------------------------------------------------------------------------- smart_resize

SMART_RESIZE_CASES = [
    # (height, width, kwargs, expected (h, w)) computed by hand from the rule
    (100, 150, {}, (112, 140)),  # round(100/28)=4 -> 112, round(150/28)=5 -> 140
    (512, 512, {}, (504, 504)),
    (28, 28, {}, (56, 56)),  # below min_pixels: scaled up
    (112, 112, {"max_pixels": 112 * 112}, (112, 112)),
    (450, 600, {"min_pixels": 56 * 56, "max_pixels": 112 * 112}, (84, 112)),
]


@pytest.mark.parametrize("h,w,kw,expected", SMART_RESIZE_CASES)
def test_smart_resize_hand_cases(h, w, kw, expected):
    assert smart_resize(h, w, **kw) == expected


def _size_grid():
    rng = np.random.default_rng(2)
    sizes = [(int(h), int(w)) for h, w in rng.integers(10, 4000, size=(220, 2))]
    sizes += [(450, 600), (600, 450), (1, 100), (28, 28), (14, 14), (3000, 4000), (224, 224), (27, 29)]
    return [(h, w) for h, w in sizes if max(h, w) / min(h, w) <= 200]


def test_smart_resize_equals_transformers():
    ref = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl").smart_resize
    settings_grid = [
        {},
        {"min_pixels": 56 * 56, "max_pixels": 112 * 112},
        {"min_pixels": 3136, "max_pixels": 12_845_056},
        {"min_pixels": 256 * 28 * 28, "max_pixels": 1280 * 28 * 28},
    ]
    sizes = _size_grid()
    assert len(sizes) >= 200
    checked = 0
    for kw in settings_grid:
        for h, w in sizes:
            assert smart_resize(h, w, **kw) == tuple(ref(h, w, **kw)), (h, w, kw)
            checked += 1
    assert checked >= 800


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2010)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


# ------------------------------------------------------------------------------------------------ frames


def test_frame_for_qwen_and_scaling():
    f = Frame.for_qwen(600, 450, min_pixels=56 * 56, max_pixels=112 * 112)
    assert (f.input_w, f.input_h) == (112, 84)
    assert f.to_input((0, 0, 600, 450)) == pytest.approx((0, 0, 112, 84))
    assert f.to_input((300, 225, 450, 300)) == pytest.approx((56, 42, 84, 56))
    assert f.to_original((56, 42, 84, 56)) == pytest.approx((300, 225, 450, 300))


def test_frame_rejects_bad_sizes():
    with pytest.raises(ValueError, match="orig_w"):
        Frame(0, 10, 28, 28)
    with pytest.raises(ValueError, match="input_h"):
        Frame(10, 10, 28, float("nan"))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(20, 3000),
    st.integers(20, 3000),
    st.sampled_from([(56 * 56, 112 * 112), (3136, 12_845_056), (56 * 56, 28 * 28 * 1280)]),
    st.tuples(*[st.floats(0, 1)] * 4),
)
def test_frame_round_trip_within_one_pixel(w, h, pixels, fr):
    if max(w, h) / min(w, h) > 200:
        return
    frame = Frame.for_qwen(w, h, *pixels)
    assert frame.input_w % 28 == 0 and frame.input_h % 28 == 0
    box = normalize_box((fr[0] * w, fr[1] * h, fr[2] * w, fr[3] * h))
    back = frame.to_original(frame.to_input(box))
    assert max(abs(p - q) for p, q in zip(back, box)) <= 1.0
    # integer-rounded input-frame boxes (what Qwen writes) still land within one original pixel per input pixel
    rounded = tuple(round(v) for v in frame.to_input(box))
    back2 = frame.to_original(rounded)
    tol = 0.5 * max(frame.orig_w / frame.input_w, frame.orig_h / frame.input_h) + 1e-9
    assert max(abs(p - q) for p, q in zip(back2, box)) <= tol


def test_iou_is_frame_invariant():
    frame = Frame.for_qwen(600, 450)
    a, b = (100, 50, 300, 200), (150, 80, 320, 260)
    assert iou(frame.to_input(a), frame.to_input(b)) == pytest.approx(iou(a, b), abs=1e-12)
    assert not math.isnan(iou(a, b))
