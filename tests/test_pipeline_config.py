"""The run configs as `zenml pipeline run` reads them: `${MEDLOC_HOME}` resolves on a fresh shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RESOLVE = """
import json, yaml
from zenml.utils.env_utils import substitute_env_variable_placeholders
import os
import medloc_training  # what `zenml pipeline run medloc_training` imports before it reads -c CONFIG
assert "MEDLOC_HOME" not in os.environ  # importing the pipeline has no side effects
medloc_training.with_options(config_path={config!r})  # what the CLI calls with -c, before it substitutes
config = yaml.safe_load(open({config!r}))
print(json.dumps(substitute_env_variable_placeholders(config)["parameters"]["data"]["sources"][0]["root"]))
"""


@pytest.mark.parametrize("config", ["medloc_training_local.yaml"])
def test_medloc_home_placeholder_resolves_without_the_variable(tmp_path: Path, config: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDLOC_", "ZENML_"))}
    env.update(
        ZENML_CONFIG_PATH=str(tmp_path / "zenml"), ZENML_ANALYTICS_OPT_IN="false", PYTHONPATH=str(REPO)
    )
    script = RESOLVE.format(config=str(REPO / "configs" / config))
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    root = json.loads(out.stdout.strip().splitlines()[-1])
    assert root == str(REPO / ".medloc" / "data" / "synth-ham10000")


BARE = """
import json, yaml
from zenml.utils.env_utils import substitute_env_variable_placeholders
import medloc_training
from pipelines.medloc_training import embedded_parameters
bare = embedded_parameters()  # what the bare command composes with
medloc_training.with_options(config_path={config!r})  # what the CLI calls with -c, before it substitutes
with_c = substitute_env_variable_placeholders(yaml.safe_load(open({config!r})))["parameters"]
print(json.dumps({{"bare": bare, "with_c": with_c}}))
"""


def test_bare_command_takes_exactly_the_local_config(tmp_path: Path) -> None:
    """`zenml pipeline run medloc_training` with no -c gets the parameters `-c configs/..._local.yaml` gives."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDLOC_", "ZENML_"))}
    env.update(
        ZENML_CONFIG_PATH=str(tmp_path / "zenml"), ZENML_ANALYTICS_OPT_IN="false", PYTHONPATH=str(REPO)
    )
    script = BARE.format(config=str(REPO / "configs" / "medloc_training_local.yaml"))
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    both = json.loads(out.stdout.strip().splitlines()[-1])
    assert both["bare"] == both["with_c"]
    assert set(both["bare"]) == {"data", "preprocessing", "training", "evaluation", "registration"}
    assert both["bare"]["data"]["sources"][0]["root"] == str(REPO / ".medloc" / "data" / "synth-ham10000")


def test_make_run_is_the_bare_command() -> None:
    out = subprocess.run(
        ["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ}
    )
    assert out.returncode == 0, out.stderr
    line = [ln for ln in out.stdout.splitlines() if "pipeline run" in ln]
    assert len(line) == 1 and line[0].rstrip().endswith("zenml pipeline run medloc_training"), line
    out = subprocess.run(
        ["make", "-n", "run", "CONFIG=configs/medloc_training_gpu.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "pipeline run medloc_training -c configs/medloc_training_gpu.yaml" in out.stdout
