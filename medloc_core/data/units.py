"""One image unit (an image and its annotation targets, as a reader yields it) to records or quarantine entries:
the image is opened once, masks become boxes, boxes are checked in original pixels."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medloc_core.data.masks import MIN_COMPONENT_PX, binarise, inverted_mask_problem, mask_boxes
from medloc_core.data.records import (
    QuarantineEntry,
    check_box,
    dumps_meta,
)
from medloc_core.data.scan import ImageUnit, Target
from medloc_core.images import check_size, oriented_size, to_rgb


def _quarantine_all(unit: ImageUnit, field_name: str, reason: str) -> list[QuarantineEntry]:
    return [QuarantineEntry(t.source_file, t.row, field_name, reason) for t in unit.targets]


def _load_mask(path: str) -> np.ndarray:
    """Mask pixels for ``mask_boxes`` (foreground > 127), in the displayed frame (EXIF orientation applied).

    A palette mask is read by index (index 0 = background, any other = foreground), not by the palette's
    colours, whose grey level says nothing about the class; a 16-bit mask is scaled to 8 bits."""
    with Image.open(path) as raw:
        mask = ImageOps.exif_transpose(raw)
        if mask.mode == "P":
            return np.where(np.asarray(mask) != 0, 255, 0).astype(np.uint8)
        if mask.mode in ("L", "RGB", "RGBA"):
            return np.asarray(mask)
        if mask.mode == "1":
            return np.asarray(mask.convert("L"))
        return np.asarray(to_rgb(mask).convert("L"))


def _to_pixels(box: Sequence[float], box_format: str, width: int, height: int) -> tuple[float, ...]:
    if len(box) != 4:
        raise ValueError(f"needs 4 values, got {len(box)}")
    for v in box:  # float(True) == 1.0 and float("7") == 7.0: neither is a coordinate
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise TypeError(f"{v!r} is not a number")
    a, b, c, d = (float(v) for v in box)
    if box_format == "xyxy":
        return (a, b, c, d)
    if box_format == "xywh":
        return (a, b, a + c, b + d)
    if box_format == "norm_cxcywh":
        return ((a - c / 2) * width, (b - d / 2) * height, (a + c / 2) * width, (b + d / 2) * height)
    if box_format == "norm1_xyxy":
        return (a * width, b * height, c * width, d * height)
    if box_format == "norm1000_xyxy":
        return (a * width / 1000, b * height / 1000, c * width / 1000, d * height / 1000)
    raise ValueError(f"unknown box format {box_format!r}")


def _record(
    unit: ImageUnit, target: Target, record_id: str, box, width: int, height: int, meta: dict
) -> dict:
    return {
        "record_id": record_id,
        "dataset": unit.dataset,
        "image_path": unit.image_path,
        "query": target.query,
        "x1": box[0],
        "y1": box[1],
        "x2": box[2],
        "y2": box[3],
        "image_width": width,
        "image_height": height,
        "group_id": target.group_id,
        "split": target.split,
        "label": target.label,
        "meta": dumps_meta(meta),
    }


def process_unit(unit: ImageUnit) -> tuple[list[dict], list[QuarantineEntry], str | None]:
    """Decode one image and turn its targets into record dicts or quarantine entries (worker function)."""
    try:
        data = Path(unit.image_path).read_bytes()
    except OSError as exc:
        return (
            [],
            _quarantine_all(unit, "image_path", f"cannot read image file {unit.image_path}: {exc}"),
            None,
        )
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            # The frame boxes live in is the displayed one (EXIF orientation applied), as images.load_rgb
            # gives it to training, evaluation and predict.
            width, height = oriented_size(image)
    except Exception as exc:  # Pillow raises many types for corrupt data; all mean the same here
        reason = f"unreadable or corrupt image {unit.image_path}: {type(exc).__name__}: {exc}"
        return [], _quarantine_all(unit, "image_path", reason), digest
    size_problem = check_size(width, height)
    if size_problem is not None:
        return [], _quarantine_all(unit, "image_path", f"{size_problem}: {unit.image_path}"), digest
    records: list[dict] = []
    bad: list[QuarantineEntry] = []
    for target in unit.targets:
        meta = {**target.meta, "source_file": target.source_file, "row": target.row, "sha256": digest}
        if target.mask_path is not None:
            meta.update(
                mask_path=target.mask_path, mask_mode=target.mask_mode, min_component_px=MIN_COMPONENT_PX
            )
            if not os.path.isfile(target.mask_path):
                bad.append(
                    QuarantineEntry(
                        target.source_file,
                        target.row,
                        "mask_path",
                        f"mask file not found: {target.mask_path}",
                    )
                )
                continue
            try:
                mask = _load_mask(target.mask_path)
            except Exception as exc:
                reason = f"unreadable or corrupt mask {target.mask_path}: {type(exc).__name__}: {exc}"
                bad.append(QuarantineEntry(target.source_file, target.row, "mask_path", reason))
                continue
            if mask.shape[:2] != (height, width):
                reason = (
                    f"mask {target.mask_path} is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height}"
                )
                bad.append(QuarantineEntry(target.source_file, target.row, "mask_path", reason))
                continue
            inverted = inverted_mask_problem(binarise(mask))
            if inverted is not None:
                bad.append(
                    QuarantineEntry(
                        target.source_file, target.row, "mask_path", f"{target.mask_path}: {inverted}"
                    )
                )
                continue
            boxes, n_components = mask_boxes(mask, target.mask_mode)
            if not boxes:
                reason = (
                    f"empty mask {target.mask_path}: no foreground component >= {MIN_COMPONENT_PX} px "
                    "after thresholding > 127"
                )
                bad.append(QuarantineEntry(target.source_file, target.row, "mask_path", reason))
                continue
            meta["n_components"] = n_components
            if target.mask_mode == "each":
                for k, box in enumerate(boxes):
                    records.append(
                        _record(
                            unit,
                            target,
                            f"{target.record_id}_c{k}",
                            box,
                            width,
                            height,
                            {**meta, "component": k},
                        )
                    )
            else:
                records.append(_record(unit, target, target.record_id, boxes[0], width, height, meta))
            continue
        try:
            raw = _to_pixels(target.box, target.box_format, width, height)
        except (TypeError, ValueError) as exc:
            bad.append(
                QuarantineEntry(target.source_file, target.row, "bbox", f"box {target.box!r} unusable: {exc}")
            )
            continue
        box, reason, clipped = check_box(raw, width, height)
        if box is None:
            bad.append(QuarantineEntry(target.source_file, target.row, "bbox", reason))
            continue
        if clipped:
            meta["clipped_from"] = list(raw)
        records.append(_record(unit, target, target.record_id, box, width, height, meta))
    return records, bad, digest
