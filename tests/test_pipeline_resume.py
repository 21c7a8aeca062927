"""A pipeline run killed mid-training resumes from its last complete checkpoint when run again.

`zenml pipeline run medloc_training` is killed (SIGKILL, the whole process group) as soon as the training has a
complete checkpoint; the same command is run again. The training folder is keyed by (config, data), so the second
run finds the checkpoint, restores weights and curriculum state, and copies the steps done before the crash into
its own MLflow run, whose `curriculum/threshold` trace is then complete: one point per step, each step once.
A second run started while the first is live refuses at once; the run after the kill closes what the dead one
left open (ZenML run failed, MLflow run KILLED with its step, a half-registered version removed).
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
from helpers import env_for, shrunken_config, zenml_query

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

    concurrent = None  # a second run started while the first is live: refused at once, in one line
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        try:
            while True:
                if (
                    concurrent is None
                    and "Step `ingest_data` has started" in (tmp_path / "first.log").read_text()
                ):
                    concurrent = subprocess.Popen(
                        command,
                        cwd=REPO,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
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
    assert concurrent is not None
    refused = concurrent.communicate(timeout=300)[0]
    assert concurrent.returncode != 0, refused[-3000:]
    (line,) = [x for x in refused.splitlines() if x.startswith("medloc_training: ")]
    assert "another medloc_training run is live" in line and "Traceback" not in refused, refused[-3000:]

    # The kill left the MLflow run RUNNING and the ZenML run `running`; a version registered by a process
    # killed before it wrote the evaluation record is simulated on that run.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("medloc")
    (killed,) = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'")
    client.create_registered_model("medloc-grounder")
    half = client.create_model_version(
        "medloc-grounder", f"runs:/{killed.info.run_id}/model", killed.info.run_id
    )

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert f"resuming from {folder}/checkpoint-" in output
    assert "copied" in output and "earlier steps into this MLflow run" in output
    assert (folder / "final").is_dir()

    # The second run closed what the killed one left: its MLflow run KILLED with the step, its ZenML run
    # failed, the half-registered version removed; its own version has the evaluation record.
    assert "Closed orphaned run" in output and "removed medloc-grounder version" in output, output[-4000:]
    killed = client.get_run(killed.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["medloc.failed_step"] == "train_model"
    versions = {v.version: v for v in client.search_model_versions("name = 'medloc-grounder'")}
    assert half.version not in versions and versions, versions
    assert all("medloc.eval_set_hash" in v.tags for v in versions.values())
    statuses = zenml_query(
        env,
        "out = sorted(str(r.status.value) for r in Client().list_pipeline_runs(pipeline_name='medloc_training'))",
    )
    assert statuses == ["completed", "failed"], statuses
    runs_ = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
    assert len(runs_) == 1, [r.info.status for r in runs_]
    history = client.get_metric_history(runs_[0].info.run_id, "curriculum/threshold")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    rows = (folder / "history.jsonl").read_text().splitlines()
    assert len(rows) == STEPS  # truncated to the checkpoint on resume: no step twice
