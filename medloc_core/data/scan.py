"""What a reader hands to the ingestion engine: images, each with the targets (future records) on it.

Readers only parse index files (CSV, JSON, XML, folder listings) and never decode pixels; decoding, mask
boxes and box checks happen in :mod:`medloc_core.data.ingest`, in worker processes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medloc_core.data.records import QuarantineEntry

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
# How a target's box is written in its source. All become xyxy original pixels.
_SPLIT_TOKEN = re.compile(r"^(train|training|val|valid|validation|test|testing)\d*$")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
_SPLIT_NAMES.update({"test": "test", "testing": "test"})
BOX_FORMATS = ("xyxy", "xywh", "norm_cxcywh", "norm1_xyxy", "norm1000_xyxy")


@dataclass
class Target:
    """One input item that becomes a record (or several, for mask mode ``each``)."""

    record_id: str
    source_file: str
    row: int
    label: str
    query: str
    group_id: str
    split: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    box: tuple[float, ...] | None = None
    box_format: str = "xyxy"
    mask_path: str | None = None
    mask_mode: str = "union"


@dataclass
class ImageUnit:
    """One image file and the targets on it (decoded once)."""

    image_path: str
    dataset: str
    targets: list[Target]


@dataclass
class Scan:
    """A reader's output. Input rows = targets + quarantined entries."""

    units: list[ImageUnit] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def quarantine_item(
        self, source_file: str | os.PathLike, row: int, field_name: str, reason: str, *, rows: int = 1
    ) -> None:
        """One bad input item. ``rows=0`` reports an entry that is not an input row of its own (its rows are
        counted where they are quarantined), so ``input rows = records + quarantined rows`` stays exact."""
        self.quarantine.append(
            QuarantineEntry(str(source_file), int(row), field_name, _one_line(reason), int(rows))
        )

    def quarantine_file(
        self, source_file: str | os.PathLike, field_name: str, reason: str, rows: int
    ) -> None:
        """A file that cannot be read as a whole: one entry (row 0) standing for its ``rows`` input rows."""
        rows = max(1, int(rows))
        self.quarantine.append(
            QuarantineEntry(str(source_file), 0, field_name, _one_line(f"{reason} ({rows} rows)"), rows)
        )

    @property
    def n_targets(self) -> int:
        return sum(len(u.targets) for u in self.units)

    @property
    def quarantined_rows(self) -> int:
        return sum(e.rows for e in self.quarantine)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def count_lines(path: Path, *, header: bool = False) -> int:
    """Non-blank lines of a text file (minus a header line): the rows a file that cannot be parsed stood for."""
    try:
        data = path.read_bytes()
    except OSError:
        return 1
    n = sum(1 for line in data.splitlines() if line.strip())
    return max(1, n - (1 if header else 0))


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (sorted, hidden files skipped)."""
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in pattern if not p.name.startswith(".") and is_image(p))


def image_index(paths: Iterable[Path]) -> dict[str, Path]:
    """Map both the file name and the stem (lower-case) to the path; the first one wins."""
    index: dict[str, Path] = {}
    for p in paths:
        index.setdefault(p.name.lower(), p)
        index.setdefault(p.stem.lower(), p)
    return index


def split_from_name(name: str) -> str:
    """``train``/``val``/``test`` when a file or folder name says so (``training``, ``valid``, ``val2017``...)."""
    for token in re.split(r"[^a-z0-9]+", name.lower()):
        match = _SPLIT_TOKEN.match(token)
        if match:
            return _SPLIT_NAMES[match.group(1)]
    return ""
