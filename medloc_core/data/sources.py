"""Several dataset sources into one records table: the pipeline's ingestion entry point.

A source is a dict ``{"format": "ham10000", "root": "path", "options": {...}, "synth": {...}}``. When ``synth`` is
given and ``root`` holds no dataset yet, the bundled generator writes one there first (in the real layout of
``format``), so the default run exercises the same reader a downloaded dataset goes through.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medloc_core.data.ingest import read_dataset
from medloc_core.data.records import check_quarantine_limit, quarantine_frame
from medloc_core.data.synth import Difficulty, generate

logger = logging.getLogger(__name__)

SOURCE_KEYS = {"format", "root", "options", "synth"}


def materialize_synthetic(root: Path, synth: Mapping[str, Any]) -> None:
    """Generate the synthetic dataset described by ``synth`` into ``root`` unless it is already there."""
    marker = root / "medloc_synth.json"
    if marker.exists():
        return
    spec = dict(synth)
    difficulty = Difficulty(**spec.pop("difficulty", {}))
    logger.info("generating synthetic %s dataset in %s", spec.get("kind"), root)
    generate(spec.pop("kind"), root, n=int(spec.pop("n")), difficulty=difficulty, **spec)


def ingest_sources(
    sources: Sequence[Mapping[str, Any]],
    *,
    max_quarantine_fraction: float = 0.2,
    base_dir: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read every source; return ``(records, quarantine, report)``.

    The quarantine limit applies to all sources together and is checked after every source was read, so the
    report covers all of them. Relative roots are resolved against ``base_dir`` (default: the working folder).
    """
    if not sources:
        raise ValueError("data.sources is empty: name at least one dataset (format + root)")
    base_dir = base_dir or Path.cwd()
    records, quarantines, manifests = [], [], []
    for index, source in enumerate(sources):
        unknown = set(source) - SOURCE_KEYS
        if unknown or "format" not in source or "root" not in source:
            raise ValueError(
                f"data.sources[{index}]: needs 'format' and 'root' (optional 'options', 'synth'); "
                f"unknown keys {sorted(unknown)}"
            )
        root = Path(source["root"])
        root = root if root.is_absolute() else base_dir / root
        if source.get("synth"):
            materialize_synthetic(root, source["synth"])
        result = read_dataset(
            source["format"], root, max_quarantine_fraction=None, **dict(source.get("options") or {})
        )
        records.append(result.records)
        quarantines.append(result.quarantine)
        manifests.append(result.manifest)
    records_df = pd.concat(records, ignore_index=True) if records else pd.DataFrame()
    quarantine_df = pd.concat(quarantines, ignore_index=True) if quarantines else quarantine_frame([])
    duplicated = records_df["record_id"].duplicated()
    if duplicated.any():
        raise ValueError(
            "record_id collides across sources (same dataset listed twice?): "
            f"{records_df.loc[duplicated, 'record_id'].head(5).tolist()}"
        )
    input_rows = sum(int(m["counts"]["input_rows"]) for m in manifests)
    report = {
        "sources": manifests,
        "input_rows": input_rows,
        "records": len(records_df),
        "quarantined": len(quarantine_df),
        "max_quarantine_fraction": max_quarantine_fraction,
    }
    report["hash"] = hashlib.sha256(json.dumps(report, sort_keys=True, default=str).encode()).hexdigest()
    check_quarantine_limit(len(quarantine_df), input_rows, max_quarantine_fraction)
    return records_df, quarantine_df, report
