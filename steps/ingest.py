"""Ingestion step: dataset folders (or the bundled synthetic set) -> records + quarantine report."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import pandas as pd
from zenml import step

from medloc_core.data.sources import ingest_sources
from medloc_core.run_config import DataConfig
from steps.mlflow_run import pipeline_mlflow_run

logger = logging.getLogger(__name__)


@step(experiment_tracker=True)
def ingest_data(
    config: DataConfig,
) -> tuple[
    Annotated[pd.DataFrame, "records"],
    Annotated[pd.DataFrame, "quarantine"],
    Annotated[dict, "ingest_report"],
]:
    """Read each configured source with its real-format reader; bad rows go to the quarantine table."""
    import mlflow

    if not config.sources:  # the pipeline fills in the embedded config's sources (the bundled synthetic set)
        raise ValueError("data.sources: no dataset to ingest")
    sources = [s.model_dump(exclude_none=True) for s in config.sources]
    records, quarantine, report = ingest_sources(
        sources, max_quarantine_fraction=config.max_quarantine_fraction, progress=False
    )
    pipeline_mlflow_run()
    mlflow.log_params(
        {
            "data.max_quarantine_fraction": str(config.max_quarantine_fraction),
            "data.sources": json.dumps(sources)[:6000],
        }
    )
    mlflow.log_metrics(
        {
            "data/input_rows": report["input_rows"],
            "data/records": report["records"],
            "data/quarantined": report["quarantined"],
        }
    )
    logger.info(
        "Ingested %d input rows: %d records, %d quarantined",
        report["input_rows"],
        report["records"],
        report["quarantined"],
    )
    return records, quarantine, report
