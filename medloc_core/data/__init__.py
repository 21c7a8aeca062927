"""Data: dataset readers, synthetic datasets, records/quarantine tables and preprocessing.

Boxes are ``(x1, y1, x2, y2)`` floats in original-image pixels (continuous coordinates) in records; the
prepared table adds the same box in the Qwen2.5-VL model-input frame (``in_x1..in_y2``).
"""

from medloc_core.data.ingest import IngestResult, ingest, read_dataset
from medloc_core.data.preprocess import PREPARED_COLUMNS, assign_splits, preprocess
from medloc_core.data.readers import FORMATS  # noqa: E402  (one list: the readers registry)
from medloc_core.data.records import (
    DEFAULT_MAX_QUARANTINE_FRACTION,
    QUARANTINE_COLUMNS,
    RECORD_COLUMNS,
    Quarantine,
    QuarantineLimitExceeded,
    read_records,
)
from medloc_core.data.synth import KINDS, Difficulty, generate

__all__ = [
    "DEFAULT_MAX_QUARANTINE_FRACTION",
    "FORMATS",
    "KINDS",
    "PREPARED_COLUMNS",
    "QUARANTINE_COLUMNS",
    "RECORD_COLUMNS",
    "Difficulty",
    "IngestResult",
    "Quarantine",
    "QuarantineLimitExceeded",
    "assign_splits",
    "generate",
    "ingest",
    "preprocess",
    "read_dataset",
    "read_records",
]
