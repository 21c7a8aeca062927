"""Helpers shared by the readers: path resolution, grouping targets by image, small parsers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from medloc_core.data.records import SPLITS
from medloc_core.data.scan import ImageUnit, Target, image_index, list_images

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_FOUR_NUMBERS = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")


class ImageFinder:
    """Resolve an image reference (absolute, relative to some base folders, or by file name/stem)."""

    def __init__(self, root: Path, bases: Sequence[Path] = ()) -> None:
        self.root = root
        self.bases = [*bases, root]
        self._index: dict[str, Path] | None = None

    def find(self, ref: str, extra_bases: Sequence[Path] = ()) -> Path | None:
        ref = ref.strip()
        if not ref:
            return None
        path = Path(ref)
        if path.is_absolute():
            return path if path.is_file() else None
        for base in (*extra_bases, *self.bases):
            candidate = base / path
            if candidate.is_file():
                return candidate
        if self._index is None:
            self._index = image_index(list_images(self.root) if self.root.is_dir() else [])
        return self._index.get(path.name.lower())


def units_from_targets(dataset: str, pairs: Iterable[tuple[Path, Target]]) -> list[ImageUnit]:
    """Group ``(image_path, target)`` pairs by image, keeping first-seen order; paths become absolute."""
    units: dict[str, ImageUnit] = {}
    for image_path, target in pairs:
        key = str(Path(image_path).resolve())
        unit = units.get(key)
        if unit is None:
            unit = units[key] = ImageUnit(key, dataset, [])
        unit.targets.append(target)
    return list(units.values())


def parse_box_text(value: object) -> list[float] | None:
    """Four numbers from a list or from text such as ``"[1, 2, 3, 4]"`` / ``"<answer>[1,2,3,4]</answer>"``."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], (list, tuple, dict)):
            return parse_box_text(value[0])
        if len(value) != 4:
            return None
        try:
            return [float(v) for v in value]
        except (TypeError, ValueError):
            return None
    if isinstance(value, dict):
        for key in ("bbox_2d", "bbox", "box"):
            if key in value:
                return parse_box_text(value[key])
        return None
    if isinstance(value, str):
        try:
            return parse_box_text(json.loads(value))
        except ValueError:
            pass
        match = _FOUR_NUMBERS.search(value)
        if match:
            return [float(v) for v in match.groups()]
    return None


def split_value(value: object) -> str | None:
    """A split column value normalised to train/val/test/"" or None when it is not a split name."""
    text = "" if value is None else str(value).strip().lower()
    aliases = {"": "", "training": "train", "valid": "val", "validation": "val", "testing": "test"}
    text = aliases.get(text, text)
    return text if text in ("", *SPLITS) else None


def sniff_delimiter(header_line: str) -> str:
    return "\t" if header_line.count("\t") > header_line.count(",") else ","
