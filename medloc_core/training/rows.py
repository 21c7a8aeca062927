"""Training rows: the prepared table's train split checked against the processor's frame and turned into TRL
examples (``prompt``, ``image`` resized to the model-input frame, ``bbox`` in model-input pixels, xyxy).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from medloc_core import prompts
from medloc_core.boxes import smart_resize
from medloc_core.data.records import FRAME_COLUMNS
from medloc_core.images import ImageError, load_rgb
from medloc_core.model.loading import pixel_bounds

logger = logging.getLogger(__name__)


REQUIRED_COLUMNS = ("record_id", "dataset", "image_path", "split", "label", *FRAME_COLUMNS)


def _check_columns(df: Any) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"prepared data is missing column(s) {missing} (have {list(df.columns)})")


def train_rows(prepared_df: Any, split: str = "train") -> Any:
    """The ``split == "train"`` rows (or another ``split``'s), validated (input-frame boxes finite with x1 < x2,
    y1 < y2; frame sizes positive; prompt text present). Errors name the record."""
    _check_columns(prepared_df)
    rows = prepared_df[prepared_df["split"] == split].reset_index(drop=True)
    if rows.empty:
        splits = sorted(map(str, prepared_df["split"].unique()))
        raise ValueError(f"prepared data has no split=={split!r} rows (splits present: {splits})")
    for i, r in rows.iterrows():
        box = [r["in_x1"], r["in_y1"], r["in_x2"], r["in_y2"]]
        where = f"record_id={r['record_id']!r} ({split} row {i})"
        try:
            box = [float(v) for v in box]
            w, h = int(r["input_width"]), int(r["input_height"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: in_x1..in_y2 / input_width / input_height must be numbers") from None
        if not all(math.isfinite(v) for v in box) or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"{where}: input-frame box {box} is not a finite x1<x2, y1<y2 box")
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: input frame {w}x{h} is empty")
        if not isinstance(r["prompt_text"], str) or not r["prompt_text"].strip():
            raise ValueError(f"{where}: prompt_text is empty")
    return rows


def _load_image(path: str, size: tuple[int, int], where: str):
    from PIL import Image

    try:
        img = load_rgb(path)
    except ImageError as exc:
        raise ValueError(f"{where}: cannot read image_path {path!r}: {exc}") from exc
    return img.resize(size, Image.BICUBIC) if img.size != size else img


def check_frames(rows: Any, processor: Any) -> None:
    """Every row's input frame must be a fixed point of the processor's smart_resize, else the boxes (in that
    frame) would not match what the model sees."""

    min_px, max_px = pixel_bounds(processor)
    for i, r in rows.iterrows():
        h, w = int(r["input_height"]), int(r["input_width"])
        if smart_resize(h, w, min_pixels=min_px, max_pixels=max_px) != (h, w):
            raise ValueError(
                f"record_id={r['record_id']!r} (train row {i}): input frame {w}x{h} was preprocessed with other "
                f"pixel bounds than the processor's (min_pixels={min_px}, max_pixels={max_px}); set "
                "TrainingConfig.min_pixels/max_pixels to the preprocessing values"
            )


def build_examples(rows: Any, answer_style: str) -> list[dict[str, Any]]:
    """Rows -> dicts with ``prompt``, ``image`` (PIL, input frame), ``bbox``, ``dataset``, ``record_id``,
    ``target`` (the SFT completion)."""
    out = []
    for i, r in rows.iterrows():
        where = f"record_id={r['record_id']!r} (train row {i})"
        size = (int(r["input_width"]), int(r["input_height"]))
        bbox = [float(r[c]) for c in ("in_x1", "in_y1", "in_x2", "in_y2")]
        out.append(
            {
                "prompt": prompts.chat_messages(r["prompt_text"]),
                "image": _load_image(str(r["image_path"]), size, where),
                "bbox": bbox,
                "dataset": str(r["dataset"]),
                "record_id": str(r["record_id"]),
                "target": prompts.target_completion(bbox, str(r["label"]), answer_style=answer_style),
            }
        )
    return out
