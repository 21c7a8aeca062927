"""The records table, the quarantine table and the checks that decide between them.

A *record* is one grounding query: one image, one target box. Boxes are ``(x1, y1, x2, y2)`` floats in
**original-image pixels**, x right, y down, continuous coordinates (area = (x2-x1)*(y2-y1)); a mask pixel
``(row, col)`` covers ``[col, col+1) x [row, row+1)``, so a mask's box is
``[min_col, min_row, max_col + 1, max_row + 1]``.

Every input item a reader sees (a metadata row, an annotation, an image with no annotation, a JSONL line,
...) ends in exactly one of two places: the records table or the quarantine table (``source_file, row,
field, reason``). ``row`` is 1-based: the line number for text files (the header is line 1), the element
index for JSON lists and XML objects, and 0 where a whole file is the item.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

RECORD_COLUMNS = (
    "record_id",
    "dataset",
    "image_path",
    "query",
    "x1",
    "y1",
    "x2",
    "y2",
    "image_width",
    "image_height",
    "group_id",
    "split",
    "label",
    "meta",
)

#: What preprocessing adds to a record: the prompt and the Qwen2.5-VL model-input frame (size, and the box in it).
FRAME_COLUMNS = ("prompt_text", "input_width", "input_height", "in_x1", "in_y1", "in_x2", "in_y2")

#: The prepared table's columns, in order (the one list: preprocessing writes it, training and evaluation read it).
PREPARED_COLUMNS = (*RECORD_COLUMNS, *FRAME_COLUMNS)
QUARANTINE_COLUMNS = ("source_file", "row", "field", "reason", "rows")
SPLITS = ("train", "val", "test")
DEFAULT_MAX_QUARANTINE_FRACTION = 0.2
# Boxes that overshoot the image by at most this many pixels are clipped (and the clip is noted in meta):
# annotation tools commonly write x2 == width + 1 or float noise. Larger overshoots are quarantined.
BOX_TOLERANCE_PX = 1.0
MIN_BOX_SIDE_PX = 1.0


class QuarantineLimitExceeded(RuntimeError):
    """Too large a share of the input was quarantined; the message names the counts and the report path."""

    def __init__(self, quarantined: int, input_rows: int, limit: float, report_path: str | None) -> None:
        self.quarantined = quarantined
        self.input_rows = input_rows
        self.limit = limit
        self.report_path = report_path
        share = quarantined / input_rows if input_rows else 1.0
        where = f"see {report_path}" if report_path else "the quarantine table was not written to disk"
        super().__init__(
            f"quarantine limit exceeded: {quarantined} of {input_rows} input rows quarantined "
            f"({share:.1%}) > limit {limit:.1%}; {where} for file/row/field/reason "
            "(raise --max-quarantine-fraction to accept)"
        )


@dataclass
class QuarantineEntry:
    """One quarantined input item. ``rows`` is how many input rows it stands for: 1 for a row, the file's row
    count when a whole file could not be parsed (row 0), so the quarantine fraction sees the real loss."""

    source_file: str
    row: int
    field: str
    reason: str
    rows: int = 1


@dataclass
class Quarantine:
    """Collects quarantined input items. ``add`` never raises."""

    entries: list[QuarantineEntry] = field(default_factory=list)

    def add(self, source_file: str, row: int, field_name: str, reason: str) -> None:
        self.entries.append(QuarantineEntry(str(source_file), int(row), field_name, reason))

    def extend(self, entries: Iterable[QuarantineEntry]) -> None:
        self.entries.extend(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def to_frame(self) -> pd.DataFrame:
        return quarantine_frame(self.entries)


def quarantine_frame(entries: Iterable[QuarantineEntry]) -> pd.DataFrame:
    rows = [(e.source_file, e.row, e.field, e.reason, e.rows) for e in entries]
    frame = pd.DataFrame(rows, columns=list(QUARANTINE_COLUMNS))
    return frame.astype({"source_file": str, "row": "int64", "field": str, "reason": str, "rows": "int64"})


def records_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a records DataFrame with exactly :data:`RECORD_COLUMNS` and their dtypes."""
    frame = pd.DataFrame([{c: r[c] for c in RECORD_COLUMNS} for r in rows], columns=list(RECORD_COLUMNS))
    return frame.astype(
        {
            "record_id": str,
            "dataset": str,
            "image_path": str,
            "query": str,
            "x1": "float64",
            "y1": "float64",
            "x2": "float64",
            "y2": "float64",
            "image_width": "int64",
            "image_height": "int64",
            "group_id": str,
            "split": str,
            "label": str,
            "meta": str,
        }
    ).reset_index(drop=True)


def check_box(
    box: Iterable[float], width: int, height: int
) -> tuple[tuple[float, float, float, float] | None, str, bool]:
    """Validate a pixel box against an image of ``width`` x ``height`` pixels.

    Returns ``(box, "", clipped)`` when usable (clipped to the image if it overshot by at most
    :data:`BOX_TOLERANCE_PX`), else ``(None, reason, False)``.
    """
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None, f"box is not four numbers: {box!r}", False
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None, f"box has non-finite values: {[x1, y1, x2, y2]}", False
    if x2 - x1 < MIN_BOX_SIDE_PX or y2 - y1 < MIN_BOX_SIDE_PX:
        return None, f"degenerate box {[x1, y1, x2, y2]} (width or height < {MIN_BOX_SIDE_PX:g} px)", False
    tol = BOX_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        return None, f"box {[x1, y1, x2, y2]} lies outside the {width}x{height} image", False
    clipped_box = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    clipped = clipped_box != (x1, y1, x2, y2)
    if clipped_box[2] - clipped_box[0] < MIN_BOX_SIDE_PX or clipped_box[3] - clipped_box[1] < MIN_BOX_SIDE_PX:
        return None, f"box {[x1, y1, x2, y2]} is degenerate once clipped to the {width}x{height} image", False
    return clipped_box, "", clipped


def dumps_meta(meta: Mapping[str, Any]) -> str:
    return json.dumps(dict(meta), sort_keys=True, default=str)


def check_quarantine_limit(
    quarantined: int, input_rows: int, limit: float, report_path: str | None = None
) -> None:
    """Raise :class:`QuarantineLimitExceeded` when ``quarantined / input_rows > limit``."""
    if input_rows == 0:
        return
    if quarantined / input_rows > limit:
        raise QuarantineLimitExceeded(quarantined, input_rows, limit, report_path)


def read_records(path: str) -> pd.DataFrame:
    """Load a ``records.parquet`` written by ingest, checking it has the record columns."""
    frame = pd.read_parquet(path)
    missing = [c for c in RECORD_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a records table, missing columns {missing}")
    return frame
