"""Ingestion engine: run a reader, decode every image in worker processes, sort items into records or quarantine.

Checks made here for every target: the image file can be read and fully decoded (truncated or corrupt files
are caught), a mask exists, matches the image size and has foreground, the box is finite, non-degenerate and
inside the image (overshoot <= 1 px is clipped and noted in ``meta``), and the record id is unique.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from medloc_core.data.masks import MIN_COMPONENT_PX, binarise, inverted_mask_problem, mask_boxes
from medloc_core.data.records import (
    DEFAULT_MAX_QUARANTINE_FRACTION,
    QuarantineEntry,
    check_box,
    check_quarantine_limit,
    dumps_meta,
    quarantine_frame,
    records_frame,
)
from medloc_core.data.scan import ImageUnit, Scan, Target
from medloc_core.images import check_size, oriented_size, to_rgb

log = logging.getLogger(__name__)
# Below this many images the pool's start-up costs more than it saves.
MIN_UNITS_FOR_POOL = 64


@dataclass
class IngestResult:
    """Records (original-pixel boxes), quarantine table and the manifest (counts, options, hashes)."""

    records: pd.DataFrame
    quarantine: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)


def _quarantine_all(unit: ImageUnit, field_name: str, reason: str) -> list[QuarantineEntry]:
    return [QuarantineEntry(t.source_file, t.row, field_name, reason) for t in unit.targets]


def _load_mask(path: str) -> np.ndarray:
    """Mask pixels for ``mask_boxes`` (foreground > 127), in the displayed frame (EXIF orientation applied).

    A palette mask is read by index (index 0 = background, any other = foreground), not by the palette's
    colours, whose grey level says nothing about the class; a 16-bit mask is scaled to 8 bits."""
    with Image.open(path) as raw:
        mask = ImageOps.exif_transpose(raw)
        if mask.mode == "P":
            return np.where(np.asarray(mask) != 0, 255, 0).astype(np.uint8)
        if mask.mode in ("L", "RGB", "RGBA"):
            return np.asarray(mask)
        if mask.mode == "1":
            return np.asarray(mask.convert("L"))
        return np.asarray(to_rgb(mask).convert("L"))


def _to_pixels(box: Sequence[float], box_format: str, width: int, height: int) -> tuple[float, ...]:
    if len(box) != 4:
        raise ValueError(f"needs 4 values, got {len(box)}")
    for v in box:  # float(True) == 1.0 and float("7") == 7.0: neither is a coordinate
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise TypeError(f"{v!r} is not a number")
    a, b, c, d = (float(v) for v in box)
    if box_format == "xyxy":
        return (a, b, c, d)
    if box_format == "xywh":
        return (a, b, a + c, b + d)
    if box_format == "norm_cxcywh":
        return ((a - c / 2) * width, (b - d / 2) * height, (a + c / 2) * width, (b + d / 2) * height)
    if box_format == "norm1_xyxy":
        return (a * width, b * height, c * width, d * height)
    if box_format == "norm1000_xyxy":
        return (a * width / 1000, b * height / 1000, c * width / 1000, d * height / 1000)
    raise ValueError(f"unknown box format {box_format!r}")


def _record(
    unit: ImageUnit, target: Target, record_id: str, box, width: int, height: int, meta: dict
) -> dict:
    return {
        "record_id": record_id,
        "dataset": unit.dataset,
        "image_path": unit.image_path,
        "query": target.query,
        "x1": box[0],
        "y1": box[1],
        "x2": box[2],
        "y2": box[3],
        "image_width": width,
        "image_height": height,
        "group_id": target.group_id,
        "split": target.split,
        "label": target.label,
        "meta": dumps_meta(meta),
    }


def process_unit(unit: ImageUnit) -> tuple[list[dict], list[QuarantineEntry], str | None]:
    """Decode one image and turn its targets into record dicts or quarantine entries (worker function)."""
    try:
        data = Path(unit.image_path).read_bytes()
    except OSError as exc:
        return (
            [],
            _quarantine_all(unit, "image_path", f"cannot read image file {unit.image_path}: {exc}"),
            None,
        )
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            # The frame boxes live in is the displayed one (EXIF orientation applied), as images.load_rgb
            # gives it to training, evaluation and predict.
            width, height = oriented_size(image)
    except Exception as exc:  # Pillow raises many types for corrupt data; all mean the same here
        reason = f"unreadable or corrupt image {unit.image_path}: {type(exc).__name__}: {exc}"
        return [], _quarantine_all(unit, "image_path", reason), digest
    size_problem = check_size(width, height)
    if size_problem is not None:
        return [], _quarantine_all(unit, "image_path", f"{size_problem}: {unit.image_path}"), digest
    records: list[dict] = []
    bad: list[QuarantineEntry] = []
    for target in unit.targets:
        meta = {**target.meta, "source_file": target.source_file, "row": target.row, "sha256": digest}
        if target.mask_path is not None:
            meta.update(
                mask_path=target.mask_path, mask_mode=target.mask_mode, min_component_px=MIN_COMPONENT_PX
            )
            if not os.path.isfile(target.mask_path):
                bad.append(
                    QuarantineEntry(
                        target.source_file,
                        target.row,
                        "mask_path",
                        f"mask file not found: {target.mask_path}",
                    )
                )
                continue
            try:
                mask = _load_mask(target.mask_path)
            except Exception as exc:
                reason = f"unreadable or corrupt mask {target.mask_path}: {type(exc).__name__}: {exc}"
                bad.append(QuarantineEntry(target.source_file, target.row, "mask_path", reason))
                continue
            if mask.shape[:2] != (height, width):
                reason = (
                    f"mask {target.mask_path} is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height}"
                )
                bad.append(QuarantineEntry(target.source_file, target.row, "mask_path", reason))
                continue
            inverted = inverted_mask_problem(binarise(mask))
            if inverted is not None:
                bad.append(
                    QuarantineEntry(
                        target.source_file, target.row, "mask_path", f"{target.mask_path}: {inverted}"
                    )
                )
                continue
            boxes, n_components = mask_boxes(mask, target.mask_mode)
            if not boxes:
                reason = (
                    f"empty mask {target.mask_path}: no foreground component >= {MIN_COMPONENT_PX} px "
                    "after thresholding > 127"
                )
                bad.append(QuarantineEntry(target.source_file, target.row, "mask_path", reason))
                continue
            meta["n_components"] = n_components
            if target.mask_mode == "each":
                for k, box in enumerate(boxes):
                    records.append(
                        _record(
                            unit,
                            target,
                            f"{target.record_id}_c{k}",
                            box,
                            width,
                            height,
                            {**meta, "component": k},
                        )
                    )
            else:
                records.append(_record(unit, target, target.record_id, boxes[0], width, height, meta))
            continue
        try:
            raw = _to_pixels(target.box, target.box_format, width, height)
        except (TypeError, ValueError) as exc:
            bad.append(
                QuarantineEntry(target.source_file, target.row, "bbox", f"box {target.box!r} unusable: {exc}")
            )
            continue
        box, reason, clipped = check_box(raw, width, height)
        if box is None:
            bad.append(QuarantineEntry(target.source_file, target.row, "bbox", reason))
            continue
        if clipped:
            meta["clipped_from"] = list(raw)
        records.append(_record(unit, target, target.record_id, box, width, height, meta))
    return records, bad, digest


def _inside(path: str, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(root)


def _contain(scan: Scan, root: Path) -> None:
    """Quarantine every target whose image or mask resolves outside ``root`` (the folder, or the folder of a
    root file), following symlinks, without opening the file."""
    base = Path(os.path.realpath(root))
    if not base.is_dir():
        base = base.parent
    kept_units = []
    for unit in scan.units:
        if not _inside(unit.image_path, base):
            for t in unit.targets:
                scan.quarantine_item(
                    t.source_file,
                    t.row,
                    "image_path",
                    f"image path {unit.image_path} leads outside the dataset root {base}",
                )
            continue
        kept = []
        for t in unit.targets:
            if t.mask_path is not None and not _inside(t.mask_path, base):
                scan.quarantine_item(
                    t.source_file,
                    t.row,
                    "mask_path",
                    f"mask path {t.mask_path} leads outside the dataset root {base}",
                )
                continue
            kept.append(t)
        unit.targets = kept
        kept_units.append(unit)
    scan.units = [u for u in kept_units if u.targets]


def _dedupe_targets(scan: Scan) -> None:
    """Keep the first target per record id; later ones go to quarantine naming where the first came from."""
    seen: dict[str, tuple[str, int]] = {}
    for unit in scan.units:
        kept = []
        for t in unit.targets:
            if t.record_id in seen:
                first = seen[t.record_id]
                scan.quarantine_item(
                    t.source_file,
                    t.row,
                    "record_id",
                    f"duplicate record id {t.record_id!r} (first at {first[0]} row {first[1]})",
                )
                continue
            seen[t.record_id] = (t.source_file, t.row)
            kept.append(t)
        unit.targets = kept
    scan.units = [u for u in scan.units if u.targets]


def run_units(
    units: Sequence[ImageUnit],
    *,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "reading images",
) -> Iterable[tuple[list[dict], list[QuarantineEntry], str | None]]:
    """Process units in order, in a process pool when there are enough of them."""
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    bar = tqdm(total=len(units), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if workers <= 1 or len(units) < MIN_UNITS_FOR_POOL:
            for unit in units:
                yield process_unit(unit)
                bar.update(1)
            return
        chunksize = max(1, min(64, len(units) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(process_unit, units, chunksize=chunksize):
                yield result
                bar.update(1)
    finally:
        bar.close()


def run_scan(
    scan: Scan,
    *,
    fmt: str,
    root: str,
    workers: int | None = None,
    progress: bool = True,
) -> IngestResult:
    """Turn a reader's :class:`Scan` into records + quarantine + manifest (no limit check, no files).

    Input rows = targets + the rows each quarantine entry stands for (a whole unparseable file counts all of
    its rows). Images and masks whose real path leads outside the dataset root (absolute paths, ``..``,
    symlinks) are quarantined here, before any file is opened."""
    input_rows = scan.n_targets + scan.quarantined_rows
    _contain(scan, Path(root))
    _dedupe_targets(scan)
    records: list[dict] = []
    bad: list[QuarantineEntry] = list(scan.quarantine)
    hashes: dict[str, str] = {}
    for unit, (recs, q, digest) in zip(scan.units, run_units(scan.units, workers=workers, progress=progress)):
        records.extend(recs)
        bad.extend(q)
        if digest is not None:
            hashes[unit.image_path] = digest
    # mask mode "each" adds ids; they must stay unique too
    ids: set[str] = set()
    unique = []
    for rec in records:
        if rec["record_id"] in ids:
            meta = json.loads(rec["meta"])
            bad.append(
                QuarantineEntry(
                    meta["source_file"], meta["row"], "record_id", f"duplicate record id {rec['record_id']!r}"
                )
            )
            continue
        ids.add(rec["record_id"])
        unique.append(rec)
    # Each target has a unique (source_file, row); mask mode "each" can give one target several records.
    source_rows = set()
    for rec in unique:
        meta = json.loads(rec["meta"])
        source_rows.add((meta["source_file"], meta["row"]))
    records_df = records_frame(unique)
    quarantine_df = quarantine_frame(bad)
    counts = {
        "input_rows": input_rows,
        "records": len(records_df),
        "source_rows_in_records": len(source_rows),
        "quarantined": int(quarantine_df["rows"].sum()) if len(quarantine_df) else 0,
        "quarantine_entries": len(quarantine_df),
        "images": len(hashes),
    }
    if counts["source_rows_in_records"] + counts["quarantined"] != input_rows:
        raise RuntimeError(f"internal error: ingest lost or duplicated items: {counts}")
    manifest = {
        "format": fmt,
        "root": str(Path(root).resolve()),
        "reader_options": scan.options,
        "counts": counts,
        "quarantine_by_field": quarantine_df["field"].value_counts().to_dict() if len(quarantine_df) else {},
        "datasets": records_df["dataset"].value_counts().to_dict() if len(records_df) else {},
        "source_hashes": dict(sorted(hashes.items())),
    }
    return IngestResult(records_df, quarantine_df, manifest)


def read_dataset(
    fmt: str,
    root: str | os.PathLike,
    *,
    workers: int | None = None,
    progress: bool = True,
    max_quarantine_fraction: float | None = DEFAULT_MAX_QUARANTINE_FRACTION,
    **options: Any,
) -> IngestResult:
    """Read a dataset folder (as downloaded) in format ``fmt`` into records and quarantine, in memory.

    ``options`` go to the reader (see :data:`medloc_core.data.readers.READERS`). Raises
    :class:`~medloc_core.data.records.QuarantineLimitExceeded` when more than ``max_quarantine_fraction`` of
    the input rows were quarantined (``None`` disables the check).
    """
    from medloc_core.data.readers import get_reader

    reader = get_reader(fmt)
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    scan = reader(root, **options)
    result = run_scan(scan, fmt=fmt, root=str(root), workers=workers, progress=progress)
    if max_quarantine_fraction is not None:
        c = result.manifest["counts"]
        check_quarantine_limit(c["quarantined"], c["input_rows"], max_quarantine_fraction)
    return result


def ingest(
    fmt: str,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_quarantine_fraction: float = DEFAULT_MAX_QUARANTINE_FRACTION,
    workers: int | None = None,
    progress: bool = True,
    **options: Any,
) -> IngestResult:
    """Read a dataset and write ``out_dir/records.parquet``, ``quarantine.csv`` and ``manifest.json``.

    The files are written before the quarantine limit is checked, so the report named in
    :class:`~medloc_core.data.records.QuarantineLimitExceeded` exists.
    """
    result = read_dataset(
        fmt, root, workers=workers, progress=progress, max_quarantine_fraction=None, **options
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.records.to_parquet(out / "records.parquet", index=False)
    result.quarantine.to_csv(out / "quarantine.csv", index=False)
    result.manifest["max_quarantine_fraction"] = max_quarantine_fraction
    (out / "manifest.json").write_text(json.dumps(result.manifest, indent=2, sort_keys=True))
    c = result.manifest["counts"]
    log.info(
        "ingested %s: %d input rows -> %d records, %d quarantined (%s)",
        fmt,
        c["input_rows"],
        c["records"],
        c["quarantined"],
        out / "quarantine.csv",
    )
    check_quarantine_limit(
        c["quarantined"], c["input_rows"], max_quarantine_fraction, str(out / "quarantine.csv")
    )
    return result
