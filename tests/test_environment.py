"""One environment for every entry point: the Makefile, the ``medloc`` command (and so the cron line) and the
tools it starts all resolve the same absolute ZenML and MLflow stores."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from medloc_core import environment
from medloc_core.cli import tools

ROOT = Path(__file__).resolve().parents[1]
MEDLOC = Path(sys.executable).with_name("medloc")


def _makefile_exports() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text()
    exports = dict(re.findall(r"^export (\w+) \?= (.*)$", text, flags=re.M))
    return {k: v.replace("$(CURDIR)", str(ROOT)) for k, v in exports.items()}


def test_the_makefile_exports_the_project_environment():
    assert _makefile_exports() == environment.project_environment(ROOT)


def test_every_path_in_the_project_environment_is_absolute_and_inside_the_project(tmp_path):
    env = environment.project_environment(tmp_path / "proj")
    paths = {k: v for k, v in env.items() if "/" in v}
    assert set(paths) == {"MEDLOC_HOME", "ZENML_CONFIG_PATH", "ZENML_LOCAL_STORES_PATH"}
    assert all(Path(v).is_absolute() and v.startswith(str(tmp_path / "proj")) for v in paths.values())


def test_apply_never_overrides_what_is_set(monkeypatch):
    monkeypatch.setenv("MEDLOC_HOME", "/elsewhere")
    monkeypatch.delenv("ZENML_CONFIG_PATH", raising=False)
    added = environment.apply(environment.project_environment(ROOT))
    try:
        assert os.environ["MEDLOC_HOME"] == "/elsewhere" and "MEDLOC_HOME" not in added
        assert os.environ["ZENML_CONFIG_PATH"] == str(ROOT / ".medloc/zenml/config")
    finally:
        for name in added:
            os.environ.pop(name)


def _medloc(*args: str, cwd: Path, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEDLOC_", "ZENML_", "MLFLOW_"))}
    out = subprocess.run(
        [str(MEDLOC), *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_medloc_finds_the_project_stores_from_any_working_directory(tmp_path):
    """What the cron line runs (``cd <root> && medloc schedule run``) and what a user runs from elsewhere."""
    for cwd in (ROOT, tmp_path):
        lines = dict(
            line.removeprefix("export ").split("=", 1) for line in _medloc("env", cwd=cwd).split("\n") if line
        )
        assert lines["ZENML_CONFIG_PATH"] == str(ROOT / ".medloc/zenml/config")
        assert lines["MLFLOW_TRACKING_URI"] == f"sqlite:///{ROOT}/.medloc/mlflow/mlflow.db"
    moved = _medloc("env", cwd=tmp_path, MEDLOC_HOME=str(tmp_path / "h"))
    assert f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/h/mlflow/mlflow.db" in moved


def test_ui_and_serve_run_the_tools_of_this_environment_on_the_project_store(tmp_path):
    ui = _medloc("ui", "--dry-run", cwd=tmp_path).split()
    assert ui[0] == str(Path(sys.executable).with_name("mlflow"))
    assert ui[ui.index("--backend-store-uri") + 1] == f"sqlite:///{ROOT}/.medloc/mlflow/mlflow.db"
    serve = _medloc("serve", "--dry-run", cwd=tmp_path).split()
    assert serve[serve.index("--env-manager") + 1] == "local"  # no package index, no new environment
    assert serve[serve.index("-m") + 1] == tools.CHAMPION_URI
    env = tools.tool_environment()
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)  # uvicorn is found


def test_the_cron_line_runs_on_the_project_stores(tmp_path):
    """Cron starts the line with an almost empty environment: the command still finds the project's stores."""
    line = _medloc("schedule", "cron", "--cron", "0 3 * * *", cwd=tmp_path).strip()
    command = line.split(" ", 5)[5]  # after the five schedule fields
    probe = command[: command.index(" schedule run ")] + " env"  # the same program, printing its environment
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh"}
    out = subprocess.run(
        ["/bin/sh", "-c", probe], env=cron_env, capture_output=True, text=True, check=True
    ).stdout
    assert f"export ZENML_CONFIG_PATH={ROOT}/.medloc/zenml/config" in out, out
    assert f"export MLFLOW_TRACKING_URI=sqlite:///{ROOT}/.medloc/mlflow/mlflow.db" in out, out
