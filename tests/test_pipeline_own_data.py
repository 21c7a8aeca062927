"""The README's own-data path: a dataset folder in a real format (here TN3K, generated in its layout) through
``zenml pipeline run medloc_training -c configs/medloc_training_smoke.yaml`` with the two variables set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import env_for

from medloc_core.data.synth import generate

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_smoke_config_runs_a_folder_in_a_real_format(tmp_path: Path) -> None:
    root = tmp_path / "TN3K"
    generate("tn3k", root, n=40, seed=3, progress=False)
    env = {**env_for(tmp_path), "MEDLOC_DATA_FORMAT": "tn3k", "MEDLOC_DATA_ROOT": str(root)}
    zenml = Path(sys.executable).with_name("zenml")
    command = [str(zenml), "pipeline", "run", "medloc_training", "-c", "configs/medloc_training_smoke.yaml"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "Ingested 40 input rows: 40 records, 0 quarantined" in log and "Summary of this run" in log, log[
        -3000:
    ]

    missing = {**env, "MEDLOC_DATA_ROOT": str(tmp_path / "nowhere")}  # checked before any step runs
    result = subprocess.run(command, cwd=REPO, env=missing, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "nowhere" in result.stderr and "Step ingest_data" not in result.stdout
