"""YOLO (Ultralytics / Darknet) detection folders.

``images/[split/]name.jpg`` with ``labels/[split/]name.txt`` (or the ``.txt`` next to the image); each
line is ``class cx cy w h`` normalised to [0, 1] by the image size (converted to pixels once the image is
decoded), or ``class x1 y1 x2 y2 ...`` polygon points (segmentation labels; their extent is used). Class
names come from ``data.yaml``/``dataset.yaml`` (``names``) or ``classes.txt``/``obj.names``; with no names
file the label is ``class_<k>``. Items: every non-blank label line, every image with no or an empty label
file.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from medloc_core.data.readers._common import units_from_targets
from medloc_core.data.scan import Scan, Target, list_images, split_from_name
from medloc_core.data.templates import TARGET_LABELS, default_query


class NamesFileError(ValueError):
    """The class-names file exists but cannot be read; every label line is quarantined with this reason."""


def _class_names(root: Path) -> list[str] | None:
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        for path in sorted(root.rglob(name)):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise NamesFileError(
                    f"{path.name} is malformed: {' '.join(str(exc).split())[:160]}"
                ) from None
            names = data.get("names") if isinstance(data, dict) else None
            if isinstance(names, dict):
                try:
                    keys = sorted(names, key=int)
                except (TypeError, ValueError):
                    raise NamesFileError(f"{path.name}: 'names' keys must be class indices") from None
                if [int(k) for k in keys] != list(range(len(keys))):
                    raise NamesFileError(f"{path.name}: 'names' keys must be 0..{len(keys) - 1}")
                return [str(names[k]) for k in keys]
            if isinstance(names, list):
                return [str(n) for n in names]
            if data is not None and not isinstance(data, dict) or "names" in (data or {}):
                raise NamesFileError(f"{path.name}: 'names' must be a list or an index -> name mapping")
    for name in ("classes.txt", "obj.names"):
        for path in sorted(root.rglob(name)):
            return [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return None


def _label_file(image: Path, root: Path) -> Path:
    rel = image.relative_to(root).parts
    if "images" in rel:
        i = len(rel) - 1 - rel[::-1].index("images")
        candidate = root.joinpath(*rel[:i], "labels", *rel[i + 1 :]).with_suffix(".txt")
        if candidate.exists():
            return candidate
    return image.with_suffix(".txt")


def read_yolo(root: Path, *, dataset: str = "yolo", labels: list[str] | None = None) -> Scan:
    names_error = None
    try:
        names = _class_names(root)
    except NamesFileError as exc:
        names, names_error = None, str(exc)
    scan = Scan(
        options={"dataset": dataset, "class_names": names, "labels": labels, "names_error": names_error}
    )
    images = list_images(root)
    if not images:
        raise FileNotFoundError(f"{root}: no images found (YOLO layout images/ + labels/)")
    pairs = []
    for image in images:
        rel = image.relative_to(root)
        split = next((s for s in (split_from_name(p) for p in rel.parts[:-1]) if s), "")
        label_file = _label_file(image, root)
        if not label_file.exists():
            scan.quarantine_item(
                image, 0, "label_file", f"no YOLO label file {label_file.name} for this image"
            )
            continue
        lines = label_file.read_text(errors="replace").splitlines()
        if not any(line.strip() for line in lines):
            scan.quarantine_item(
                label_file, 0, "label_file", "empty label file (background image, no target)"
            )
            continue
        for line_num, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                values = [float(v) for v in parts]
            except ValueError:
                scan.quarantine_item(
                    label_file, line_num, "line", f"malformed line {line.strip()!r}: not numbers"
                )
                continue
            if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
                scan.quarantine_item(
                    label_file,
                    line_num,
                    "line",
                    f"malformed line {line.strip()!r}: expected 'class cx cy w h'",
                )
                continue
            if names_error is not None:
                scan.quarantine_item(label_file, line_num, "class", f"class names unreadable: {names_error}")
                continue
            cls = values[0]
            if (
                not math.isfinite(cls)
                or cls != int(cls)
                or cls < 0
                or (names is not None and int(cls) >= len(names))
            ):
                scan.quarantine_item(label_file, line_num, "class", f"unknown label: class index {parts[0]}")
                continue
            name = names[int(cls)] if names is not None else f"class_{int(cls)}"
            if labels is not None and name not in labels:
                scan.quarantine_item(
                    label_file, line_num, "class", f"unknown label {name!r}; allowed {labels}"
                )
                continue
            if len(values) == 5:
                box, box_format = tuple(values[1:]), "norm_cxcywh"
            else:
                xs, ys = values[1::2], values[2::2]
                box, box_format = (min(xs), min(ys), max(xs), max(ys)), "norm1_xyxy"
            parts = rel.with_suffix("").parts
            record_stem = "/".join(parts[1:] if parts[0] == "images" and len(parts) > 1 else parts)
            target = Target(
                record_id=f"{record_stem}:{line_num}",
                source_file=str(label_file),
                row=line_num,
                label=name,
                query=default_query(dataset, TARGET_LABELS.get(dataset, name)),
                group_id=record_stem,
                split=split,
                meta={"class_index": int(cls)},
                box=box,
                box_format=box_format,
            )
            pairs.append((image, target))
    scan.units = units_from_targets(dataset, pairs)
    return scan
