"""Ingestion engine: run a reader, decode every image in worker processes, sort items into records or quarantine.

Checks made here for every target: the image file can be read and fully decoded (truncated or corrupt files
are caught), a mask exists, matches the image size and has foreground, the box is finite, non-degenerate and
inside the image (overshoot <= 1 px is clipped and noted in ``meta``), and the record id is unique.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from medloc_core.data.readers import get_reader
from medloc_core.data.records import (
    DEFAULT_MAX_QUARANTINE_FRACTION,
    QuarantineEntry,
    check_quarantine_limit,
    quarantine_frame,
    records_frame,
)
from medloc_core.data.scan import ImageUnit, Scan
from medloc_core.data.units import process_unit

log = logging.getLogger(__name__)
# Below this many images the pool's start-up costs more than it saves.
MIN_UNITS_FOR_POOL = 64


@dataclass
class IngestResult:
    """Records (original-pixel boxes), quarantine table and the manifest (counts, options, hashes)."""

    records: pd.DataFrame
    quarantine: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)


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
