"""ISIC 2018 Task 1 (lesion boundary segmentation) folders.

``ISIC2018_Task1-2_Training_Input/ISIC_xxxxxxx.jpg`` with ``ISIC2018_Task1_Training_GroundTruth/
ISIC_xxxxxxx_segmentation.png`` and the same for ``Validation`` and ``Test``; the split comes from the folder
name. ISIC 2016/2017 spell the suffix ``_Segmentation``: matching is case-insensitive. ``*_superpixels.png``
(ISIC 2017) and non-image files (LICENSE.txt, ATTRIBUTION.txt) are ignored. Items: every input image and
every mask that has no image.
"""

from __future__ import annotations

from pathlib import Path

from medloc_core.data.masks import MASK_MODES
from medloc_core.data.readers._common import units_from_targets
from medloc_core.data.scan import Scan, Target, list_images, split_from_name
from medloc_core.data.templates import TARGET_LABELS, default_query

SEG_SUFFIX = "_segmentation"


def _split_of(path: Path, root: Path) -> str:
    for part in reversed(path.relative_to(root).parts[:-1]):
        split = split_from_name(part)
        if split:
            return split
    return ""


def read_isic2018(root: Path, *, mask_mode: str = "union", dataset: str = "isic2018") -> Scan:
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}")
    scan = Scan(options={"mask_mode": mask_mode, "dataset": dataset})
    files = [p for p in list_images(root) if not p.stem.lower().endswith("_superpixels")]
    masks: dict[tuple[str, str], Path] = {}
    images: list[Path] = []
    for p in files:
        stem = p.stem.lower()
        if stem.endswith(SEG_SUFFIX):
            masks[(stem[: -len(SEG_SUFFIX)], _split_of(p, root))] = p
        else:
            images.append(p)
    if not images and not masks:
        raise FileNotFoundError(f"{root}: no ISIC images or *_segmentation masks found")
    label = TARGET_LABELS.get(dataset, "skin lesion")
    query = default_query(dataset, label)
    used: set[tuple[str, str]] = set()
    pairs = []
    for image in images:
        key = (image.stem.lower(), _split_of(image, root))
        mask = masks.get(key)
        if mask is None:
            scan.quarantine_item(
                image, 0, "mask_path", f"missing mask: no {image.stem}_segmentation.png for {image.name}"
            )
            continue
        used.add(key)
        target = Target(
            record_id=f"{key[1]}_{image.stem}" if key[1] else image.stem,
            source_file=str(image),
            row=0,
            label=label,
            query=query,
            group_id=image.stem,
            split=key[1],
            mask_path=str(mask.resolve()),
            mask_mode=mask_mode,
        )
        pairs.append((image, target))
    for key, mask in sorted(masks.items()):
        if key not in used:
            scan.quarantine_item(mask, 0, "image_path", f"mask {mask.name} has no matching input image")
    scan.units = units_from_targets(dataset, pairs)
    return scan
