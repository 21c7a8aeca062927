"""COCO detection JSON: ``images`` (id, file_name, width, height), ``annotations`` (id, image_id,
category_id, bbox = [x, y, w, h] in pixels, continuous), ``categories`` (id, name).

The root may be the JSON file or a folder; every ``*.json`` under a folder that has ``images`` and
``annotations`` keys is read (others are listed in the options as ignored). Image files are looked up
relative to the JSON, the root, an ``images/`` folder, then (bare file names only, when unique) by name under
the root. The split comes from an image's ``split`` key, the JSON file name (``instances_train2017.json`` ->
train) or its folder (Roboflow's ``train/``, ``valid/``, ``test/`` each with ``_annotations.coco.json``).
Record ids are ``<JSON stem>_<annotation id>``, or ``<JSON path relative to the root>:<annotation id>`` where
several files share a stem, so per-folder files never collide.

Items: every annotation, every image without annotations. A JSON file that does not parse counts as all the
annotations it holds (``"image_id"`` occurrences); one bad value quarantines its annotation (or image entry).
Image ids must be unique within a file: a duplicated id quarantines its image entries and every annotation on
it (which image was meant cannot be known). ``dataset`` defaults to ``info.dataset`` in the JSON, else
``"coco"``.
"""

from __future__ import annotations

import json
from pathlib import Path

from medloc_core.data.readers._common import ImageFinder, split_value, units_from_targets
from medloc_core.data.scan import Scan, Target, split_from_name
from medloc_core.data.templates import TARGET_LABELS, default_query


def _is_id(value: object) -> bool:
    """COCO ids are integers or strings (a list, dict, float or bool is a bad value, and unhashable ones would
    crash a lookup)."""
    return isinstance(value, int | str) and not isinstance(value, bool)


def _annotation_count(text: str) -> int:
    return max(1, text.count('"image_id"'))


def read_coco(root: Path, *, dataset: str | None = None, labels: list[str] | None = None) -> Scan:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if p.is_file())
    base = root.parent if root.is_file() else root
    finder = ImageFinder(base)
    scan = Scan(options={"dataset": dataset, "labels": labels, "ignored_json": [], "annotation_files": []})
    pairs_by_dataset: dict[str, list] = {}
    stems = [p.stem for p in files]
    for path in files:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            text = raw.decode("utf-8", errors="replace")
            scan.quarantine_file(path, "json", f"not UTF-8: {exc}", _annotation_count(text))
            continue
        try:
            data = json.loads(text)
        except ValueError as exc:
            scan.quarantine_file(path, "json", f"malformed JSON: {exc}", _annotation_count(text))
            continue
        if not (isinstance(data, dict) and "images" in data and "annotations" in data):
            scan.options["ignored_json"].append(str(path))
            continue
        scan.options["annotation_files"].append(str(path))
        one = Scan()
        try:
            unique_stem = stems.count(path.stem) == 1
            pairs = _read_file(path, data, base, finder, one, dataset, labels, unique_stem)
        except Exception as exc:  # a value no check foresaw: lose nothing, say where
            scan.quarantine_file(
                path, "json", f"cannot read COCO file: {type(exc).__name__}: {exc}", _annotation_count(text)
            )
            continue
        scan.quarantine.extend(one.quarantine)
        for name, image_path, target in pairs:
            pairs_by_dataset.setdefault(name, []).append((image_path, target))
    if not scan.options["annotation_files"] and not scan.quarantine:
        raise FileNotFoundError(f"{root}: no COCO annotation JSON (with 'images' and 'annotations') found")
    for name, pairs in pairs_by_dataset.items():
        scan.units.extend(units_from_targets(name, pairs))
    return scan


def _read_file(
    path: Path,
    data: dict,
    base: Path,
    finder: ImageFinder,
    scan: Scan,
    dataset: str | None,
    labels: list[str] | None,
    unique_stem: bool,
) -> list[tuple[str, Path, Target]]:
    images_raw, anns_raw = data.get("images"), data.get("annotations")
    if not isinstance(anns_raw, list):
        n = len(images_raw) if isinstance(images_raw, list) else 1
        scan.quarantine_file(path, "annotations", f"'annotations' must be a list, got {anns_raw!r:.60}", n)
        return []
    if not isinstance(images_raw, list):
        scan.quarantine_file(
            path, "images", f"'images' must be a list, got {images_raw!r:.60}", len(anns_raw)
        )
        return []
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    name = dataset or str(info.get("dataset") or "coco")
    cats_raw = data.get("categories")
    categories = {
        c.get("id"): str(c.get("name", c.get("id")))
        for c in (cats_raw if isinstance(cats_raw, list) else [])
        if isinstance(c, dict) and _is_id(c.get("id"))
    }
    rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
    file_split = split_from_name(path.stem) or split_from_name(path.parent.name)
    # "<stem>_<ann id>"; where several files share a stem (Roboflow: train/, valid/, test/ each with
    # _annotations.coco.json) the path relative to the root keeps the ids apart.
    id_prefix = f"{path.stem}_" if unique_stem else f"{rel.with_suffix('').as_posix()}:"

    images: dict[object, tuple[int, dict]] = {}
    duplicated: dict[object, list[int]] = {}
    for position, image in enumerate(images_raw, start=1):
        if not isinstance(image, dict) or not _is_id(image.get("id")) or not image.get("file_name"):
            scan.quarantine_item(path, position, "images", f"malformed image entry: {str(image)[:120]}")
            continue
        if image["id"] in images or image["id"] in duplicated:
            first = images.pop(image["id"], None)
            duplicated.setdefault(image["id"], [first[0]] if first else []).append(position)
            continue
        images[image["id"]] = (position, image)

    out: list[tuple[str, Path, Target]] = []
    annotated: set[object] = set()
    for position, ann in enumerate(anns_raw, start=1):
        if not isinstance(ann, dict) or "image_id" not in ann:
            scan.quarantine_item(path, position, "annotation", f"malformed annotation: {str(ann)[:120]}")
            continue
        image_id = ann["image_id"]
        if not _is_id(image_id):
            scan.quarantine_item(
                path, position, "image_id", f"image_id must be an integer or string, got {image_id!r:.60}"
            )
            continue
        if image_id in duplicated:
            annotated.add(image_id)
            scan.quarantine_item(
                path,
                position,
                "image_id",
                f"image id {image_id!r} is duplicated (image entries {duplicated[image_id]})",
            )
            continue
        if image_id not in images:
            scan.quarantine_item(
                path, position, "image_id", f"annotation refers to unknown image id {image_id!r}"
            )
            continue
        annotated.add(image_id)
        category_id = ann.get("category_id")
        category = categories.get(category_id) if _is_id(category_id) else None
        if category is None:
            scan.quarantine_item(
                path, position, "category_id", f"unknown label: category id {category_id!r:.60}"
            )
            continue
        if labels is not None and category not in labels:
            scan.quarantine_item(
                path, position, "category_id", f"unknown label {category!r}; allowed {labels}"
            )
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            scan.quarantine_item(path, position, "bbox", f"bbox must be [x, y, w, h], got {bbox!r:.80}")
            continue
        image = images[image_id][1]
        file_name = str(image["file_name"])
        image_path = finder.find(
            file_name, (path.parent, path.parent / "images", path.parent.parent / "images", base / "images")
        )
        if image_path is None:
            scan.quarantine_item(path, position, "file_name", finder.why_not(file_name))
            continue
        split = split_value(image.get("split")) if image.get("split") else file_split
        if split is None:
            scan.quarantine_item(path, position, "split", f"unknown split {image.get('split')!r:.60}")
            continue
        ann_id = ann.get("id", position)
        target = Target(
            record_id=f"{id_prefix}{ann_id}",
            source_file=str(path),
            row=position,
            label=category,
            query=str(ann.get("query") or default_query(name, TARGET_LABELS.get(name, category))),
            group_id=str(image.get("group_id") or image.get("patient_id") or Path(file_name).stem),
            split=split,
            meta={"annotation_id": ann_id, "image_id": image_id, "category": category},
            box=tuple(bbox),
            box_format="xywh",
        )
        out.append((name, image_path, target))
    # An image entry is an input item only when no annotation is on it (the annotations are the items then):
    # a duplicated id's entries are reported either way, counted as rows only when nothing refers to them.
    for image_id, positions in duplicated.items():
        for position in positions:
            scan.quarantine_item(
                path,
                position,
                "id",
                f"duplicate image id {image_id!r} (image entries {positions})",
                rows=0 if image_id in annotated else 1,
            )
    for image_id, (position, image) in images.items():
        if image_id not in annotated:
            scan.quarantine_item(
                path, position, "annotations", f"image {image['file_name']!r} has no annotations"
            )
    return out
