"""Pascal VOC XML: one ``<annotation>`` per image with ``<filename>`` and ``<object><name>`` +
``<bndbox><xmin>..``. VOC coordinates are 1-based inclusive pixel indices, so the continuous box is
``[xmin - 1, ymin - 1, xmax, ymax]`` (set ``one_based=False`` for tools that write 0-based corners).
Split lists ``ImageSets/Main/{train,val,test}.txt`` are honoured. Items: every object, every XML with no
object, every XML that does not parse.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from medloc_core.data.readers._common import ImageFinder, units_from_targets
from medloc_core.data.scan import Scan, Target
from medloc_core.data.templates import TARGET_LABELS, default_query


def _split_lists(root: Path) -> dict[str, str]:
    splits: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for path in root.rglob(f"ImageSets/Main/{split}.txt"):
            for line in path.read_text().split():
                splits.setdefault(line.strip(), split)
    return splits


def read_voc(
    root: Path, *, dataset: str = "voc", labels: list[str] | None = None, one_based: bool = True
) -> Scan:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.xml") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no Pascal VOC .xml annotation files")
    base = root.parent if root.is_file() else root
    finder = ImageFinder(base)
    splits = _split_lists(base)
    scan = Scan(options={"dataset": dataset, "labels": labels, "one_based": one_based})
    offset = 1.0 if one_based else 0.0
    pairs = []
    for path in files:
        try:
            tree = ET.parse(path)
        except (ET.ParseError, ValueError, LookupError) as exc:  # LookupError: unknown encoding declared
            scan.quarantine_file(path, "xml", f"malformed XML: {exc}", path.read_bytes().count(b"<object"))
            continue
        node = tree.getroot()
        objects = node.findall("object")
        if not objects:
            scan.quarantine_item(path, 0, "object", "annotation has no <object>")
            continue
        filename = (node.findtext("filename") or "").strip() or path.stem
        # No fallback to an image named like the XML file: a <filename> that is refused or missing is
        # quarantined with that reason, never replaced by a guess.
        image_path = finder.find(filename, (path.parent.parent / "JPEGImages", path.parent))
        for k, obj in enumerate(objects, start=1):
            name = (obj.findtext("name") or "").strip()
            if not name:
                scan.quarantine_item(path, k, "name", "object has no <name>")
                continue
            if labels is not None and name not in labels:
                scan.quarantine_item(path, k, "name", f"unknown label {name!r}; allowed {labels}")
                continue
            if image_path is None:
                scan.quarantine_item(path, k, "filename", finder.why_not(filename))
                continue
            bndbox = obj.find("bndbox")
            try:
                if bndbox is None:
                    raise ValueError("no <bndbox>")
                xmin, ymin, xmax, ymax = (
                    float(bndbox.findtext(tag) or "nan") for tag in ("xmin", "ymin", "xmax", "ymax")
                )
            except ValueError as exc:
                scan.quarantine_item(path, k, "bndbox", f"malformed <bndbox>: {exc}")
                continue
            target = Target(
                record_id=f"{path.stem}_{k}",
                source_file=str(path),
                row=k,
                label=name,
                query=default_query(dataset, TARGET_LABELS.get(dataset, name)),
                group_id=path.stem,
                split=splits.get(path.stem, ""),
                meta={"object_index": k},
                box=(xmin - offset, ymin - offset, xmax, ymax),
            )
            pairs.append((image_path, target))
    scan.units = units_from_targets(dataset, pairs)
    return scan
