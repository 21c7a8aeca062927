"""A pipeline run killed mid-training resumes from its last complete checkpoint when run again.

`zenml pipeline run medloc_training` is killed (SIGKILL, the whole process group) as soon as the training has a
complete checkpoint; the same command is run again. The training folder is keyed by (config, data), so the second
run finds the checkpoint, restores weights and curriculum state, and copies the steps done before the crash into
its own MLflow run, whose `curriculum/threshold` trace is then complete: one point per step, each step once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline_e2e import env_for, shrunken_config

REPO = Path(__file__).resolve().parents[1]
STEPS = 24


@pytest.mark.slow
def test_killed_pipeline_run_resumes_training_and_completes_the_mlflow_trace(tmp_path: Path) -> None:
    config_path = shrunken_config(tmp_path)
    config = yaml.safe_load(config_path.read_text())
    config["parameters"]["training"].update(max_steps=STEPS, save_steps=4)
    config_path.write_text(yaml.safe_dump(config))
    env = env_for(tmp_path)
    command = [
        str(Path(sys.executable).with_name("zenml")),
        "pipeline",
        "run",
        "medloc_training",
        "-c",
        str(config_path),
    ]
    runs = tmp_path / "home" / "runs"

    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        try:
            while True:
                done = [
                    p for p in runs.glob("train-*/checkpoint-*") if (p / "curriculum_state.json").is_file()
                ]
                if done:
                    break
                assert first.poll() is None, (
                    "the run ended before a checkpoint was seen: "
                    + (tmp_path / "first.log").read_text()[-3000:]
                )
                assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
                time.sleep(0.05)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    folder = done[0].parent
    assert not (folder / "final").exists(), "killed too late: the training had finished"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert f"resuming from {folder}/checkpoint-" in output
    assert "copied" in output and "earlier steps into this MLflow run" in output
    assert (folder / "final").is_dir()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("medloc")
    runs_ = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
    assert len(runs_) == 1, [r.info.status for r in runs_]
    history = client.get_metric_history(runs_[0].info.run_id, "curriculum/threshold")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    rows = (folder / "history.jsonl").read_text().splitlines()
    assert len(rows) == STEPS  # truncated to the checkpoint on resume: no step twice
