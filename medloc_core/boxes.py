"""Bounding boxes: IoU, clipping, Qwen2.5-VL resize frames and parsing boxes out of model text.

Conventions (the project-wide contract, see ``docs/architecture.md``):

* A box is ``(x1, y1, x2, y2)`` in **pixels**, x to the right, y down, continuous coordinates, so
  ``area = (x2 - x1) * (y2 - y1)``. A box with ``x2 < x1`` or ``y2 < y1`` has area 0 here.
* Records hold boxes in the **original-image frame**. The model sees the image after Qwen2.5-VL's
  ``smart_resize`` and reads / writes boxes in that **model-input frame**. :class:`Frame` is the only place
  that converts between the two.

Only numpy is imported: this module is on the reward hot path and must import quickly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Box = tuple[float, float, float, float]

# Qwen2.5-VL image-processor defaults (transformers' Qwen2VLImageProcessor): patch 14, merge 2.
QWEN_FACTOR = 28
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 14 * 14 * 4 * 1280
_MAX_ASPECT_RATIO = 200


# --------------------------------------------------------------------------------------------------- IoU


def box_area(box: Sequence[float]) -> float:
    """Area in square pixels; inverted or degenerate boxes have area 0."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` pixel boxes, in [0, 1].

    Continuous coordinates (no +1 pixel convention). Returns 0.0 when the union is 0 (two degenerate boxes)
    or when a coordinate is not finite.
    """
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    inter = iw * ih if iw > 0.0 and ih > 0.0 else 0.0
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
    if not union > 0.0 or not math.isfinite(union):
        return 0.0
    value = inter / union
    return min(1.0, max(0.0, value))


def _as_boxes(arr: Any, name: str) -> np.ndarray:
    out = np.asarray(arr, dtype=np.float64)
    if out.ndim != 2 or out.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) of (x1, y1, x2, y2) boxes, got shape {out.shape}")
    return out


def _iou_broadcast(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU for broadcastable ``(..., 4)`` arrays (shared by :func:`iou_pairs` and :func:`iou_matrix`)."""
    ax1, ay1, ax2, ay2 = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bx1, by1, bx2, by2 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0.0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0.0, None)
    inter = iw * ih
    area_a = np.clip(ax2 - ax1, 0.0, None) * np.clip(ay2 - ay1, 0.0, None)
    area_b = np.clip(bx2 - bx1, 0.0, None) * np.clip(by2 - by1, 0.0, None)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = inter / union
    valid = (union > 0.0) & np.isfinite(union)
    out = np.where(valid, out, 0.0)
    return np.clip(out, 0.0, 1.0, out=out)


def iou_pairs(a: Any, b: Any) -> np.ndarray:
    """Row-wise IoU of two ``(N, 4)`` arrays of pixel boxes -> ``(N,)`` float64 (same rules as :func:`iou`)."""
    a_arr, b_arr = _as_boxes(a, "a"), _as_boxes(b, "b")
    if a_arr.shape[0] != b_arr.shape[0]:
        raise ValueError(
            f"iou_pairs needs the same number of boxes, got {a_arr.shape[0]} and {b_arr.shape[0]}"
        )
    return _iou_broadcast(a_arr, b_arr)


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """All-pairs IoU of ``(N, 4)`` and ``(M, 4)`` pixel boxes -> ``(N, M)`` float64."""
    a_arr, b_arr = _as_boxes(a, "a"), _as_boxes(b, "b")
    return _iou_broadcast(a_arr[:, None, :], b_arr[None, :, :])


def clip_box(box: Sequence[float], width: float, height: float) -> Box:
    """Clamp a pixel box to the image ``[0, width] x [0, height]``. Corner order is kept, not fixed."""
    if not (width > 0 and height > 0):
        raise ValueError(f"clip_box needs a positive image size, got width={width!r}, height={height!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = float(width), float(height)
    return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


def normalize_box(box: Sequence[float]) -> Box:
    """Swap corners where needed so that ``x1 <= x2`` and ``y1 <= y2``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


# ------------------------------------------------------------------------------------------ resize frames


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen2-VL / Qwen2.5-VL input size for an image of ``height x width`` pixels -> ``(new_h, new_w)``.

    Same rule as ``transformers.models.qwen2_vl.image_processing_pil_qwen2_vl.smart_resize`` (re-implemented
    so that no torch / torchvision import is needed): both sides become multiples of ``factor``, the area
    lands in ``[min_pixels, max_pixels]``, and the aspect ratio is kept as closely as possible. Python's
    ``round`` (half to even) is used on purpose, as transformers does.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"smart_resize needs a positive size, got height={height}, width={width}")
    if max(height, width) / min(height, width) > _MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {_MAX_ASPECT_RATIO}, "
            f"got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class Frame:
    """An original image size and the model-input size it was resized to (all in pixels).

    ``to_input`` maps an original-frame box into the model-input frame by per-axis scaling;
    ``to_original`` is its inverse. IoU is invariant under per-axis scaling, so IoU can be computed in either
    frame.
    """

    orig_w: int
    orig_h: int
    input_w: int
    input_h: int

    def __post_init__(self) -> None:
        for name in ("orig_w", "orig_h", "input_w", "input_h"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ValueError(f"Frame.{name} must be a positive number of pixels, got {value!r}")

    @classmethod
    def for_qwen(
        cls,
        orig_w: int,
        orig_h: int,
        min_pixels: int = QWEN_MIN_PIXELS,
        max_pixels: int = QWEN_MAX_PIXELS,
        factor: int = QWEN_FACTOR,
    ) -> Frame:
        """The frame Qwen2.5-VL's image processor produces for an ``orig_w x orig_h`` image."""
        input_h, input_w = smart_resize(
            orig_h, orig_w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
        )
        return cls(orig_w=orig_w, orig_h=orig_h, input_w=input_w, input_h=input_h)

    @property
    def scale_x(self) -> float:
        """Input pixels per original pixel along x."""
        return self.input_w / self.orig_w

    @property
    def scale_y(self) -> float:
        """Input pixels per original pixel along y."""
        return self.input_h / self.orig_h

    def to_input(self, box: Sequence[float]) -> Box:
        """Original-frame pixel box -> model-input-frame pixel box."""
        x1, y1, x2, y2 = (float(v) for v in box)
        sx, sy = self.scale_x, self.scale_y
        return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)

    def to_original(self, box: Sequence[float]) -> Box:
        """Model-input-frame pixel box -> original-frame pixel box."""
        x1, y1, x2, y2 = (float(v) for v in box)
        sx, sy = self.orig_w / self.input_w, self.orig_h / self.input_h
        return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


# --------------------------------------------------------------------------------------------- parse_box

COORD_SYSTEMS = ("pixels", "norm1", "norm1000")

# The patterns below use possessive quantifiers (*+, ++; Python >= 3.11) wherever whitespace could be matched in
# two ways, so that hostile input (long runs of spaces or brackets) is scanned in linear time.
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_QNUM = rf"""['"]?({_NUM})['"]?"""
_SEP = r"(?:\s*+,\s*+|\s++)"
# Exactly 4 numbers separated by commas or whitespace, optionally quoted, with an optional trailing comma.
_FOUR_NUMBERS = re.compile(rf"\s*+{_QNUM}{_SEP}{_QNUM}{_SEP}{_QNUM}{_SEP}{_QNUM}\s*+,?\s*+")
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)


def answer_scopes(text: str) -> tuple[list[str], bool]:
    """Where a box may be read from a text, in order, and whether those are ``<answer>`` blocks.

    The answer wins over the reasoning everywhere a box is read (completions, dataset answers): closed
    ``<think>`` blocks are set aside first, so a box mentioned while thinking, or an ``<answer>`` example echoed
    there, never stands in for the answer. Returns the ``<answer>`` blocks outside the reasoning when there are
    any (an unclosed one runs to the end), else the text outside the reasoning and then the whole text.
    """
    outside = _THINK_BLOCK.sub(" ", text)
    blocks = [m.group(1) for m in _ANSWER_BLOCK.finditer(outside)]
    if blocks:
        return blocks, True
    return ([outside, text] if outside != text else [text]), False


# A box key followed by its list: "bbox_2d": [..], 'bbox': [..], box=[..], also a list nested once ([[..]]).
_KEYED_LIST = re.compile(
    r"""["']?\b(?:bbox_2d|bbox|box_2d|box)\b["']?\s*+[:=]\s*+[\[(]\s*+\[?([^\[\]()]*+)\]?\s*+[\])]""",
    re.IGNORECASE,
)
_BRACKET_LIST = re.compile(r"\[([^\[\]]*+)\]")
_PAREN_LIST = re.compile(r"\(([^()]*+)\)")
# Qwen2-VL's native grounding output: (x1,y1),(x2,y2), possibly inside <|box_start|>...<|box_end|>.
_POINT_PAIR = re.compile(
    rf"\(\s*+({_NUM})\s*+,\s*+({_NUM})\s*+\)\s*+,?\s*+(?:to|-)?\s*+\(\s*+({_NUM})\s*+,\s*+({_NUM})\s*+\)",
    re.IGNORECASE,
)
_CORNER_KEYS = tuple(
    re.compile(rf"""["']?\b{key}\b["']?\s*+[:=]\s*+["']?({_NUM})""", re.IGNORECASE)
    for key in ("x1", "y1", "x2", "y2")
)


# VLM-R1's REC reward (vlm_modules/qwen_module.py): the first <answer>...</answer> block, closed; inside it the
# first "[int, int, int, int]" with no space after "[" (the format reward's pattern is in medloc_core.rewards.grounding).
PARSERS = ("vlmr1", "lenient")
_VLMR1_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_VLMR1_BOX = re.compile(r"\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)]")


def _vlmr1_numbers(text: str) -> list[float] | None:
    """VLM-R1's box: first closed answer block, its first integer quadruple, as written (no corner swap)."""
    block = _VLMR1_ANSWER.search(text)
    if block is None:
        return None
    match = _VLMR1_BOX.search(block.group(1).strip())
    if match is None:
        return None
    values = [float(int(g)) for g in match.groups()]
    return values if all(math.isfinite(v) for v in values) else None


def _four_numbers(body: str) -> list[float] | None:
    """The 4 finite numbers of a list body such as ``10, 20.5, "30", 40``; None for anything else."""
    match = _FOUR_NUMBERS.fullmatch(body)
    if match is None:
        return None
    values = [float(g) for g in match.groups()]
    return values if all(math.isfinite(v) for v in values) else None


def _find_numbers(scope: str) -> list[float] | None:
    for match in _KEYED_LIST.finditer(scope):
        values = _four_numbers(match.group(1))
        if values is not None:
            return values
    for match in _BRACKET_LIST.finditer(scope):
        values = _four_numbers(match.group(1))
        if values is not None:
            return values
    for match in _POINT_PAIR.finditer(scope):
        values = [float(g) for g in match.groups()]
        if all(math.isfinite(v) for v in values):
            return values
    for match in _PAREN_LIST.finditer(scope):
        values = _four_numbers(match.group(1))
        if values is not None:
            return values
    corners = [pattern.search(scope) for pattern in _CORNER_KEYS]
    if all(corners):
        values = [float(m.group(1)) for m in corners if m is not None]
        if all(math.isfinite(v) for v in values):
            return values
    return None


def parse_box(
    text: Any,
    *,
    parser: str = "lenient",
    coords: str = "pixels",
    width: float | None = None,
    height: float | None = None,
) -> Box | None:
    """Extract one ``(x1, y1, x2, y2)`` pixel box from a model completion, or None.

    ``parser="vlmr1"`` reads the box exactly as VLM-R1's REC accuracy reward does, for GRPO rewards: the first
    closed ``<answer>...</answer>`` block, inside it the first ``[int, int, int, int]`` (non-negative integers,
    no space after ``[``), corners as written (an inverted box scores IoU 0), nothing outside the answer block.
    ``parser="lenient"`` (the default, for evaluation and ``predict``) is described below.

    Scope (:func:`answer_scopes`): closed ``<think>`` blocks are set aside; then the ``<answer>`` blocks if there
    are any (the first block holding a box wins, so an empty ``<answer> </answer>`` does not hide the real answer;
    an unclosed ``<answer>`` runs to the end of the text), else the text outside the reasoning, then the whole
    text. Inside a scope the first match wins, in this order of preference:

    1. a box key with a 4-number list: ``"bbox_2d": [...]``, ``"bbox"``, ``"box_2d"``, ``"box"`` (any quotes),
       which also covers a list of such objects (the first object with a valid box is used);
    2. the first bracketed list of exactly 4 numbers (a bare ``[x1, y1, x2, y2]``);
    3. Qwen2-VL's point pair ``(x1,y1),(x2,y2)``;
    4. a parenthesised 4-tuple;
    5. separate ``x1``/``y1``/``x2``/``y2`` keys.

    Numbers may be ints, floats, negative, in exponent form or quoted; code fences, prose, single quotes and
    JSON errors around them do not matter. Corners are swapped where needed so that ``x1 <= x2`` and
    ``y1 <= y2``; coordinates are *not* clipped (see :func:`clip_box`). A zero-area box parses (it scores IoU 0
    downstream), so that "found a box" and "found a useful box" stay separate signals.

    ``coords`` states the model's coordinate system: ``"pixels"`` (Qwen2.5-VL: absolute model-input pixels,
    returned as is), ``"norm1"`` (0-1) or ``"norm1000"`` (0-1000, Qwen2-VL); the last two are converted to
    pixels with ``width`` and ``height``, which are then required.

    Returns None for non-string input, when no box is found, for NaN/inf or overflowing numbers and for lists
    that do not hold exactly 4 numbers. It never raises on any string; it raises ValueError only for invalid
    ``coords``/``width``/``height`` arguments (a caller bug, not a model output).
    """
    if parser not in PARSERS:
        raise ValueError(f"parse_box: parser must be one of {PARSERS}, got {parser!r}")
    if coords not in COORD_SYSTEMS:
        raise ValueError(f"parse_box: coords must be one of {COORD_SYSTEMS}, got {coords!r}")
    if coords != "pixels" and not (
        width is not None
        and height is not None
        and width > 0
        and height > 0
        and math.isfinite(width * height)
    ):
        raise ValueError(
            f"parse_box: coords={coords!r} needs a positive width and height, got {width!r}, {height!r}"
        )
    if not isinstance(text, str):
        return None
    if parser == "vlmr1":
        try:
            values = _vlmr1_numbers(text)
        except (ValueError, OverflowError):  # an integer too long to convert
            return None
        if values is None:
            return None
        return _to_pixels(values, coords, width, height, swap=False)
    try:
        values = None
        for scope in answer_scopes(text)[0]:
            values = _find_numbers(scope)
            if values is not None:
                break
    except (ValueError, OverflowError, RecursionError):  # defensive: model output must never crash training
        return None
    if values is None:
        return None
    return _to_pixels(values, coords, width, height, swap=True)


def _to_pixels(
    values: list[float], coords: str, width: float | None, height: float | None, *, swap: bool
) -> Box | None:
    x1, y1, x2, y2 = values
    if coords != "pixels":
        assert width is not None and height is not None
        unit = 1.0 if coords == "norm1" else 1000.0
        x1, x2 = x1 / unit * width, x2 / unit * width
        y1, y2 = y1 / unit * height, y2 / unit * height
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            return None
    return normalize_box((x1, y1, x2, y2)) if swap else (x1, y1, x2, y2)
