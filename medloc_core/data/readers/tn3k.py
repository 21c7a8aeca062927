"""TN3K thyroid-nodule ultrasound as distributed with TRFE-Net.

``trainval-image/0000.jpg``, ``trainval-mask/0000.jpg``, ``test-image/``, ``test-mask/`` and
``tn3k-trainval-fold{0..4}.json`` = ``{"train": [i, ...], "val": [j, ...]}`` where the integers index the
**numerically sorted** trainval file list. Masks are lossy JPEGs: thresholded at > 127 with specks < 50 px
ignored (see :mod:`medloc_core.data.masks`). Multi-nodule masks follow ``mask_mode`` (union by default).
Items: every image, every fold-JSON entry that does not index an image, an unreadable fold file.
"""

from __future__ import annotations

import json
from pathlib import Path

from medloc_core.data.masks import MASK_MODES
from medloc_core.data.readers._common import units_from_targets
from medloc_core.data.scan import Scan, Target, list_images
from medloc_core.data.templates import TARGET_LABELS, default_query

SUBSETS = ("trainval", "test")


def _numeric_key(path: Path) -> tuple[int, int, str]:
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def _find_dir(root: Path, name: str) -> Path | None:
    if root.name.lower() == name:
        return root
    found = sorted(p for p in root.rglob("*") if p.is_dir() and p.name.lower() == name)
    return found[0] if found else None


def _fold_splits(scan: Scan, root: Path, fold: int, n_trainval: int) -> dict[int, str]:
    files = sorted(p for p in root.rglob(f"*trainval-fold{fold}.json") if p.is_file())
    if not files:
        scan.options["fold_file"] = None
        return {}
    path = files[0]
    scan.options["fold_file"] = str(path)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
    except ValueError as exc:
        scan.quarantine_item(path, 0, "fold_json", f"malformed fold JSON: {exc}")
        return {}
    splits: dict[int, str] = {}
    for split in ("train", "val"):
        values = data.get(split) or []
        if not isinstance(values, list):
            scan.quarantine_item(
                path, 0, split, f"fold {split!r} must be a list of indices, got {values!r:.60}"
            )
            continue
        for position, value in enumerate(values, start=1):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n_trainval:
                reason = f"fold index {value!r} is not an index into the {n_trainval} trainval images"
                scan.quarantine_item(path, position, split, reason)
            elif value in splits:
                scan.quarantine_item(path, position, split, f"index {value} is already in {splits[value]!r}")
            else:
                splits[value] = split
    return splits


def read_tn3k(root: Path, *, mask_mode: str = "union", fold: int = 0, dataset: str = "tn3k") -> Scan:
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}")
    scan = Scan(options={"mask_mode": mask_mode, "fold": fold, "dataset": dataset})
    label = TARGET_LABELS.get(dataset, "thyroid nodule")
    query = default_query(dataset, label)
    pairs = []
    found_any = False
    for subset in SUBSETS:
        image_dir = _find_dir(root, f"{subset}-image")
        if image_dir is None:
            continue
        found_any = True
        mask_dir = _find_dir(root, f"{subset}-mask")
        images = sorted(list_images(image_dir, recursive=False), key=_numeric_key)
        masks = {p.stem.lower(): p for p in list_images(mask_dir, recursive=False)} if mask_dir else {}
        splits = _fold_splits(scan, root, fold, len(images)) if subset == "trainval" else {}
        for index, image in enumerate(images):
            mask = masks.get(image.stem.lower())
            if mask is None:
                scan.quarantine_item(
                    image, 0, "mask_path", f"missing mask: no {subset}-mask/{image.stem}.* for {image.name}"
                )
                continue
            record_id = f"{subset}_{image.stem}"
            target = Target(
                record_id=record_id,
                source_file=str(image),
                row=0,
                label=label,
                query=query,
                group_id=record_id,
                split="test" if subset == "test" else splits.get(index, ""),
                meta={"subset": subset, "index": index, "fold": fold if subset == "trainval" else None},
                mask_path=str(mask.resolve()),
                mask_mode=mask_mode,
            )
            pairs.append((image, target))
    if not found_any:
        raise FileNotFoundError(f"{root}: no trainval-image/ or test-image/ folder (TN3K layout)")
    scan.units = units_from_targets(dataset, pairs)
    return scan
