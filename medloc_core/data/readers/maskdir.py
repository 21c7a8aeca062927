"""A generic pair of folders: images and binary masks matched by file stem.

Default folders are ``images/`` and ``masks/`` under the root (sub-folders named train/val/test give the
split). A mask matches an image when its stem equals the image stem, optionally followed by ``_mask``,
``_segmentation``, ``_seg`` or ``_label`` (case-insensitive). Items: every image, every unmatched mask, and
every mask beyond the first where several match one image (each file exists, so each is accounted for).
"""

from __future__ import annotations

from pathlib import Path

from medloc_core.data.masks import MASK_MODES
from medloc_core.data.readers._common import units_from_targets
from medloc_core.data.scan import Scan, Target, list_images, split_from_name
from medloc_core.data.templates import TARGET_LABELS, default_query

MASK_SUFFIXES = ("_mask", "_segmentation", "_seg", "_label")
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img")
MASK_DIR_NAMES = ("masks", "mask", "labels", "annotations", "ground_truth", "groundtruth", "gt")


def _pick_dir(root: Path, given: str | None, names: tuple[str, ...], what: str) -> Path:
    if given:
        path = Path(given)
        path = path if path.is_absolute() else root / path
        if not path.is_dir():
            raise FileNotFoundError(f"{what} folder {path} does not exist")
        return path
    for name in names:
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name.lower() == name:
                return child
    raise FileNotFoundError(f"{root}: no {what} folder (looked for {', '.join(names)})")


def _mask_key(stem: str) -> str:
    stem = stem.lower()
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def read_masks(
    root: Path,
    *,
    image_dir: str | None = None,
    mask_dir: str | None = None,
    mask_mode: str = "union",
    label: str = "finding",
    dataset: str = "masks",
) -> Scan:
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}")
    images_root = _pick_dir(root, image_dir, IMAGE_DIR_NAMES, "image")
    masks_root = _pick_dir(root, mask_dir, MASK_DIR_NAMES, "mask")
    label = TARGET_LABELS.get(dataset, label)
    scan = Scan(
        options={
            "mask_mode": mask_mode,
            "dataset": dataset,
            "label": label,
            "image_dir": str(images_root),
            "mask_dir": str(masks_root),
        }
    )
    query = default_query(dataset, label)

    def rel_key(path: Path, base: Path, stem: str) -> str:
        return str(path.parent.relative_to(base) / stem).lower()

    candidates: dict[str, list[Path]] = {}
    for p in list_images(masks_root):
        candidates.setdefault(rel_key(p, masks_root, _mask_key(p.stem)), []).append(p)
    masks = {key: found[0] for key, found in candidates.items()}
    used: set[str] = set()
    pairs = []
    for image in list_images(images_root):
        key = rel_key(image, images_root, image.stem.lower())
        mask = masks.get(key)
        if mask is not None and len(candidates[key]) > 1:
            used.add(key)
            names = ", ".join(p.name for p in candidates[key])
            scan.quarantine_item(image, 0, "mask_path", f"several masks match image {image.name}: {names}")
            for extra in candidates[key][1:]:  # each further mask file is an input item of its own
                scan.quarantine_item(
                    extra, 0, "mask_path", f"mask {extra.name} is one of several for image {image.name}"
                )
            continue
        if mask is None:
            scan.quarantine_item(
                image, 0, "mask_path", f"missing mask: no mask named {image.stem}[_mask].* in {masks_root}"
            )
            continue
        used.add(key)
        rel = image.relative_to(images_root)
        split = next((s for s in (split_from_name(p) for p in rel.parts[:-1]) if s), "")
        record_id = str(rel.with_suffix(""))
        target = Target(
            record_id=record_id,
            source_file=str(image),
            row=0,
            label=label,
            query=query,
            group_id=record_id,
            split=split,
            mask_path=str(mask.resolve()),
            mask_mode=mask_mode,
        )
        pairs.append((image, target))
    for key, mask in sorted(masks.items()):
        if key not in used:
            scan.quarantine_item(
                mask, 0, "image_path", f"mask {mask.name} has no matching image in {images_root}"
            )
    scan.units = units_from_targets(dataset, pairs)
    return scan
