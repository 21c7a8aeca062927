"""COCO detection JSON: ``images`` (id, file_name, width, height), ``annotations`` (id, image_id,
category_id, bbox = [x, y, w, h] in pixels, continuous), ``categories`` (id, name).

The root may be the JSON file or a folder; every ``*.json`` under a folder that has ``images`` and
``annotations`` keys is read (others are listed in the options as ignored). Image files are looked up
relative to the JSON, the root, an ``images/`` folder, then by file name anywhere under the root. The split
comes from an image's ``split`` key or the JSON file name (``instances_train2017.json`` -> train).
Items: every annotation, every image without annotations, every JSON file that does not parse.
``dataset`` defaults to ``info.dataset`` in the JSON, else ``"coco"``.
"""

from __future__ import annotations

import json
from pathlib import Path

from medloc_core.data.readers._common import ImageFinder, split_value, units_from_targets
from medloc_core.data.scan import Scan, Target, split_from_name
from medloc_core.data.templates import TARGET_LABELS, default_query


def read_coco(root: Path, *, dataset: str | None = None, labels: list[str] | None = None) -> Scan:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if p.is_file())
    base = root.parent if root.is_file() else root
    finder = ImageFinder(base)
    scan = Scan(options={"dataset": dataset, "labels": labels, "ignored_json": [], "annotation_files": []})
    pairs_by_dataset: dict[str, list] = {}
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            scan.quarantine_item(path, 0, "json", f"malformed JSON: {exc}")
            continue
        if not (isinstance(data, dict) and "images" in data and "annotations" in data):
            scan.options["ignored_json"].append(str(path))
            continue
        scan.options["annotation_files"].append(str(path))
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        name = dataset or str(info.get("dataset") or "coco")
        categories = {
            c.get("id"): str(c.get("name", c.get("id")))
            for c in data.get("categories", [])
            if isinstance(c, dict)
        }
        file_split = split_from_name(path.stem)
        images: dict[object, tuple[int, dict]] = {}
        for position, image in enumerate(data.get("images", []), start=1):
            if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
                scan.quarantine_item(path, position, "images", f"malformed image entry: {str(image)[:120]}")
                continue
            images[image["id"]] = (position, image)
        annotated: set[object] = set()
        for position, ann in enumerate(data.get("annotations", []), start=1):
            if not isinstance(ann, dict) or "image_id" not in ann:
                scan.quarantine_item(path, position, "annotation", f"malformed annotation: {str(ann)[:120]}")
                continue
            if ann["image_id"] not in images:
                scan.quarantine_item(
                    path, position, "image_id", f"annotation refers to unknown image id {ann['image_id']!r}"
                )
                continue
            annotated.add(ann["image_id"])
            category = categories.get(ann.get("category_id"))
            if category is None:
                scan.quarantine_item(
                    path, position, "category_id", f"unknown label: category id {ann.get('category_id')!r}"
                )
                continue
            if labels is not None and category not in labels:
                scan.quarantine_item(
                    path, position, "category_id", f"unknown label {category!r}; allowed {labels}"
                )
                continue
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                scan.quarantine_item(path, position, "bbox", f"bbox must be [x, y, w, h], got {bbox!r}")
                continue
            image = images[ann["image_id"]][1]
            image_path = finder.find(
                str(image["file_name"]),
                (path.parent, path.parent / "images", path.parent.parent / "images", base / "images"),
            )
            if image_path is None:
                scan.quarantine_item(
                    path, position, "file_name", f"image file {image['file_name']!r} not found under {base}"
                )
                continue
            split = split_value(image.get("split")) if image.get("split") else file_split
            if split is None:
                scan.quarantine_item(path, position, "split", f"unknown split {image.get('split')!r}")
                continue
            ann_id = ann.get("id", position)
            label = category
            target = Target(
                record_id=f"{path.stem}_{ann_id}",
                source_file=str(path),
                row=position,
                label=label,
                query=str(ann.get("query") or default_query(name, TARGET_LABELS.get(name, label))),
                group_id=str(
                    image.get("group_id") or image.get("patient_id") or Path(str(image["file_name"])).stem
                ),
                split=split,
                meta={"annotation_id": ann_id, "image_id": image["id"], "category": category},
                box=tuple(bbox),
                box_format="xywh",
            )
            pairs_by_dataset.setdefault(name, []).append((image_path, target))
        for image_id, (position, image) in images.items():
            if image_id not in annotated:
                scan.quarantine_item(
                    path, position, "annotations", f"image {image['file_name']!r} has no annotations"
                )
    if not scan.options["annotation_files"] and not scan.quarantine:
        raise FileNotFoundError(f"{root}: no COCO annotation JSON (with 'images' and 'annotations') found")
    for name, pairs in pairs_by_dataset.items():
        scan.units.extend(units_from_targets(name, pairs))
    return scan
