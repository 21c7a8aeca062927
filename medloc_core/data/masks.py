"""Boxes from segmentation masks.

A mask is binarised with ``value > 127`` (JPEG masks such as TN3K's carry many grey levels). Foreground is
split into 8-connected components; components smaller than ``min_component_px`` (default 50 px) are specks
from lossy compression or annotation slips and are ignored. A component's box is
``[min_col, min_row, max_col + 1, max_row + 1]`` in the mask's pixels (continuous coordinates, exclusive end).

Multi-component modes: ``union`` (one box around every kept component; single-target grounding, the
default), ``largest`` (the component with the most pixels; ties go to the first in scan order) and ``each``
(one box per component, in scan order).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MASK_THRESHOLD = 127
MIN_COMPONENT_PX = 50
MASK_MODES = ("union", "largest", "each")
_EIGHT = np.ones((3, 3), dtype=bool)

Box = tuple[float, float, float, float]


def binarise(mask: np.ndarray, threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """Foreground where the mask value exceeds ``threshold`` (colour masks: any channel)."""
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return mask > threshold


#: A mask whose foreground covers at least this share of the image *and* of its border is read as inverted
#: (lesion black on white): a real finding, however large, rarely fills the image's whole edge.
INVERTED_AREA = 0.5
INVERTED_BORDER = 0.9


def inverted_mask_problem(foreground: np.ndarray, min_component_px: int = MIN_COMPONENT_PX) -> str | None:
    """Why a binarised mask looks inverted (one line), or None. Its box would be the whole image.

    Inverted: the foreground covers most of the image and nearly all of its border, and encloses a background
    region of at least ``min_component_px`` (the lesion, black). A mask that is foreground everywhere (a lesion
    filling the frame) has no such hole and is kept."""
    if foreground.ndim != 2 or min(foreground.shape) < 3:
        return None
    area = float(foreground.mean())
    edge = float(_border(foreground).mean())
    if area < INVERTED_AREA or edge < INVERTED_BORDER:
        return None
    labels, _ = ndimage.label(~foreground, structure=_EIGHT)
    on_border = np.unique(_border(labels))
    hole = np.isin(labels, on_border, invert=True) & (labels > 0)
    if int(hole.sum()) >= min_component_px:
        return (
            f"mask looks inverted: foreground covers {100 * area:.0f} % of the image and {100 * edge:.0f} % "
            "of its border (lesion black on white?); invert the mask file"
        )
    return None


def _border(array: np.ndarray) -> np.ndarray:
    """The pixels on the edge of a 2-D array, each once."""
    return np.concatenate([array[0], array[-1], array[1:-1, 0], array[1:-1, -1]])


def component_boxes(
    foreground: np.ndarray, min_component_px: int = MIN_COMPONENT_PX
) -> list[tuple[Box, int]]:
    """``(box, pixel_count)`` for every 8-connected component of at least ``min_component_px`` pixels."""
    rows = np.flatnonzero(foreground.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(foreground.any(axis=0))
    r0, c0 = int(rows[0]), int(cols[0])
    crop = foreground[r0 : rows[-1] + 1, c0 : cols[-1] + 1]  # labelling only the extent is much cheaper
    labels, count = ndimage.label(crop, structure=_EIGHT)
    sizes = [0, int(crop.sum())] if count == 1 else np.bincount(labels.ravel(), minlength=count + 1)
    out: list[tuple[Box, int]] = []
    for index, slices in enumerate(ndimage.find_objects(labels), start=1):
        if slices is None or sizes[index] < min_component_px:
            continue
        rs, cs = slices
        box = (float(cs.start + c0), float(rs.start + r0), float(cs.stop + c0), float(rs.stop + r0))
        out.append((box, int(sizes[index])))
    return out


def mask_boxes(
    mask: np.ndarray,
    mode: str = "union",
    *,
    threshold: int = MASK_THRESHOLD,
    min_component_px: int = MIN_COMPONENT_PX,
) -> tuple[list[Box], int]:
    """Boxes for ``mode`` and the number of kept components. An empty list means no usable foreground."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    comps = component_boxes(binarise(mask, threshold), min_component_px)
    if not comps:
        return [], 0
    if mode == "each":
        return [box for box, _ in comps], len(comps)
    if mode == "largest":
        best = max(range(len(comps)), key=lambda i: (comps[i][1], -i))
        return [comps[best][0]], len(comps)
    boxes = np.array([box for box, _ in comps])
    union = (
        float(boxes[:, 0].min()),
        float(boxes[:, 1].min()),
        float(boxes[:, 2].max()),
        float(boxes[:, 3].max()),
    )
    return [union], len(comps)
