"""Helpers shared by the readers: path resolution, grouping targets by image, small parsers."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from medloc_core.boxes import answer_scopes
from medloc_core.data.records import SPLITS
from medloc_core.data.scan import ImageUnit, Target, list_images

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_FOUR_NUMBERS = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")


class ImageFinder:
    """Resolve an image reference written in an index file to a file inside the dataset root.

    A reference is tried relative to the given base folders (then the root). Only a bare file name (no folder
    part) may fall back to a search by name under the root, and only when exactly one image has that name: a
    reference with a folder that does not exist never attaches another image that happens to share its name.
    Absolute references, ``..`` and symlinks that lead outside the root give None without the file being
    opened (:meth:`why_not` says which).
    """

    def __init__(self, root: Path, bases: Sequence[Path] = ()) -> None:
        self.root = root
        self._real_root = Path(os.path.realpath(root if root.is_dir() else root.parent))
        self.bases = [*bases, root]
        self._index: dict[str, Path | None] | None = None

    def _inside(self, path: Path) -> bool:
        return Path(os.path.realpath(path)).is_relative_to(self._real_root)

    def why_not(self, ref: str) -> str:
        """One-line reason :meth:`find` returned None for ``ref``."""
        try:
            return self._why_not(ref)
        except (OSError, ValueError) as exc:
            return f"image path {ref[:80]!r} is unusable: {exc}"

    def _why_not(self, ref: str) -> str:
        if "\0" in ref:
            return "image path contains a NUL byte"
        path = Path(ref.strip())
        if path.is_absolute() and not self._inside(path):
            return f"absolute image path {ref!r} lies outside the dataset root"
        if ".." in path.parts:
            return f"image path {ref!r} leads outside the dataset root"
        if not path.is_absolute() and any(
            os.path.lexists(base / path) and not self._inside(base / path) for base in self.bases
        ):
            return f"image path {ref!r} is a link that leads outside the dataset root"
        if self._index is not None and len(path.parts) == 1 and path.name.lower() in self._index:
            if self._index[path.name.lower()] is None:
                return f"image file name {ref!r} is ambiguous: several images under the root have it"
        return f"image file {ref!r} not found"

    def find(self, ref: str, extra_bases: Sequence[Path] = ()) -> Path | None:
        try:
            return self._find(ref, extra_bases)
        except (OSError, ValueError):  # a name too long for the file system, and the like: not found
            return None

    def _find(self, ref: str, extra_bases: Sequence[Path]) -> Path | None:
        ref = ref.strip()
        if not ref or "\0" in ref:
            return None
        path = Path(ref)
        if path.is_absolute():
            return path if self._inside(path) and path.is_file() else None
        if ".." in path.parts:
            return None
        for base in (*extra_bases, *self.bases):
            candidate = base / path
            if self._inside(candidate) and candidate.is_file():
                return candidate
        if len(path.parts) != 1:
            return None
        if self._index is None:
            self._index = _unique_name_index(list_images(self.root) if self.root.is_dir() else [])
        found = self._index.get(path.name.lower())
        return found if found is not None and self._inside(found) else None


def _unique_name_index(paths: Iterable[Path]) -> dict[str, Path | None]:
    """File name and stem (lower-case) -> its path, or None when several images share that key."""
    index: dict[str, Path | None] = {}
    for p in paths:
        for key in {p.name.lower(), p.stem.lower()}:
            index[key] = None if key in index and index[key] != p else p
    return index


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


def csv_data_rows(reader: Any, scan: Any, path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of a ``csv.reader``'s data rows: blank lines are skipped (not rows), rows of only
    delimiters are quarantined on ``scan`` (they are rows, with nothing in them)."""
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if all(not c.strip() for c in row):
            scan.quarantine_item(path, line, "row", "row has no values (only delimiters)")
            continue
        yield line, row


def parse_box_text(value: object) -> list[float] | None:
    """Four numbers from a list or from text such as ``"[1, 2, 3, 4]"`` / ``"<answer>[1,2,3,4]</answer>"``."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], (list, tuple, dict)):
            return parse_box_text(value[0])
        if len(value) != 4:
            return None
        # float(True) == 1.0 and float("7") == 7.0: neither is a coordinate in a JSON list
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return None
        return [float(v) for v in value]
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
        scopes, in_answer = answer_scopes(value)
        for scope in scopes:  # the answer's box, never one mentioned in the <think> block
            if in_answer:
                try:
                    box = parse_box_text(json.loads(scope))
                except ValueError:
                    box = None
                if box is not None:
                    return box
            match = _FOUR_NUMBERS.search(scope)
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
    """The most frequent of ``,`` ``;`` tab ``|`` in the header line (``,`` on a tie or none)."""
    counts = {d: header_line.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def decode_lines(raw: bytes) -> tuple[list[str], list[int]]:
    """Split a text file's bytes into lines decoded as UTF-8 (a leading BOM dropped). A line that is not valid
    UTF-8 becomes ``""`` and its 1-based number is returned in the second list, so line numbers stay true."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines, bad = [], []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append("")
            bad.append(number)
    return lines, bad
