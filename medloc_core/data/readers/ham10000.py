"""HAM10000 as downloaded from Harvard Dataverse or the Kaggle mirror, with Tschandl's lesion masks.

Images: ``HAM10000_images_part_1/``, ``HAM10000_images_part_2/`` (Kaggle) or ``HAM10000_images_part1/`` ...
(Dataverse zips), ``ISIC_xxxxxxx.jpg``. Metadata: ``HAM10000_metadata.csv`` or the Dataverse file
``HAM10000_metadata`` without extension (comma or tab separated) with ``lesion_id, image_id, dx`` (more
columns kept in ``meta``). Masks: ``ISIC_xxxxxxx_segmentation.png`` anywhere under the root (normally
``HAM10000_segmentations_lesion_tschandl/``). ``group_id = lesion_id`` so that splits never separate images
of one lesion. The record label is the grounding target ("skin lesion"); the diagnosis ``dx`` is in ``meta``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from medloc_core.data.masks import MASK_MODES
from medloc_core.data.readers._common import csv_data_rows, sniff_delimiter, units_from_targets
from medloc_core.data.scan import Scan, Target, list_images
from medloc_core.data.templates import TARGET_LABELS, default_query

HAM_DIAGNOSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
METADATA_NAMES = (
    "ham10000_metadata",
    "ham10000_metadata.csv",
    "ham10000_metadata.tab",
    "ham10000_metadata.txt",
)
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")


def _by_id(pairs) -> dict[str, Path | list[Path]]:
    """id -> its file, or the list of files when several share the id."""
    out: dict[str, Path | list[Path]] = {}
    for key, path in pairs:
        have = out.get(key)
        out[key] = path if have is None else [*(have if isinstance(have, list) else [have]), path]
    return out


def _several(image_id: str, what: str, paths: list[Path], root: Path) -> str:
    names = ", ".join(str(p.relative_to(root)) for p in paths)
    return f"image_id {image_id!r} has several {what}: {names}"


def _quarantine_extra_files(scan: Scan, paths: list[Path], field_name: str, owner: str) -> None:
    """Files beyond the first that share one id are input items of their own: each exists, none is used."""
    for path in paths[1:]:
        scan.quarantine_item(path, 0, field_name, f"{path.name} is one of several files for {owner}")


def find_metadata(root: Path) -> Path:
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower() in METADATA_NAMES)
    if not found:
        raise FileNotFoundError(
            f"{root}: no HAM10000 metadata file (looked for {', '.join(METADATA_NAMES)} under the folder)"
        )
    return found[0]


def read_ham10000(root: Path, *, mask_mode: str = "union", dataset: str = "ham10000") -> Scan:
    """Scan a HAM10000 folder. Items: one per metadata row, one per image with no metadata row, and one per
    image or mask file beyond the first where several share an image id (each file exists, so each is
    accounted for)."""
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}")
    metadata = find_metadata(root)
    scan = Scan(options={"mask_mode": mask_mode, "dataset": dataset, "metadata_file": str(metadata)})
    files = list_images(root)
    masks = _by_id(
        (p.stem.lower()[: -len("_segmentation")], p)
        for p in files
        if p.stem.lower().endswith("_segmentation")
    )
    images = [p for p in files if not p.stem.lower().endswith("_segmentation")]
    # The same image id in both image parts (or twice anywhere) is ambiguous: its rows are quarantined,
    # never resolved by whichever file was listed last.
    image_by_id = _by_id((p.stem.lower(), p) for p in images)
    label = TARGET_LABELS.get(dataset, "skin lesion")
    query = default_query(dataset, label)

    text = metadata.read_text(encoding="utf-8-sig", errors="replace")
    lines = text.splitlines()
    reader = csv.reader(lines, delimiter=sniff_delimiter(lines[0] if lines else ""))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{metadata}: metadata header lacks columns {missing} (found {header})")
    col = {name: header.index(name) for name in header}
    pairs = []
    referenced: set[str] = set()
    for line, row in csv_data_rows(reader, scan, metadata):
        if len(row) != len(header):
            if col["image_id"] < len(row):  # its image is accounted for by this quarantined row
                referenced.add(row[col["image_id"]].strip().lower())
            scan.quarantine_item(
                metadata, line, "row", f"malformed row: {len(row)} fields, header has {len(header)}"
            )
            continue
        values = {name: row[i].strip() for name, i in col.items()}
        image_id, lesion_id, dx = values["image_id"], values["lesion_id"], values["dx"]
        referenced.add(image_id.lower())
        if not image_id:
            scan.quarantine_item(metadata, line, "image_id", "empty image_id")
            continue
        if not lesion_id:
            scan.quarantine_item(
                metadata, line, "lesion_id", "empty lesion_id (needed to split without leakage)"
            )
            continue
        if dx.lower() not in HAM_DIAGNOSES:
            scan.quarantine_item(
                metadata, line, "dx", f"unknown label {dx!r}; expected one of {HAM_DIAGNOSES}"
            )
            continue
        image = image_by_id.get(image_id.lower())
        if isinstance(image, list):
            scan.quarantine_item(metadata, line, "image_id", _several(image_id, "image files", image, root))
            _quarantine_extra_files(scan, image, "image_id", f"image_id {image_id!r}, metadata row {line}")
            continue
        if image is None:
            scan.quarantine_item(
                metadata, line, "image_id", f"no image file for image_id {image_id!r} under {root}"
            )
            continue
        mask = masks.get(image_id.lower())
        if isinstance(mask, list):
            scan.quarantine_item(metadata, line, "mask_path", _several(image_id, "masks", mask, root))
            _quarantine_extra_files(scan, mask, "mask_path", f"image_id {image_id!r}, metadata row {line}")
            continue
        if mask is None:
            scan.quarantine_item(
                metadata, line, "mask_path", f"missing mask: no {image_id}_segmentation.png under {root}"
            )
            continue
        extra = {k: v for k, v in values.items() if k not in ("image_id", "lesion_id")}
        target = Target(
            record_id=image_id,
            source_file=str(metadata),
            row=line,
            label=label,
            query=query,
            group_id=lesion_id,
            meta=extra,
            mask_path=str(mask.resolve()),
            mask_mode=mask_mode,
        )
        pairs.append((image, target))
    # Images in the HAM image folders that no metadata row names are input items too.
    image_dirs = [p for p in images if p.parent.name.lower().startswith("ham10000_images")]
    for image in image_dirs or images:
        if image.stem.lower() not in referenced:
            scan.quarantine_item(image, 0, "image_id", f"image {image.name} has no row in {metadata.name}")
    scan.units = units_from_targets(dataset, pairs)
    return scan
