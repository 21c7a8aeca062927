"""Where local state lives: ``$MEDLOC_HOME`` (default ``./.medloc``, always made absolute).

Every entry point of the project (``make run``, ``medloc``, the cron line, serving) resolves the same folder
here, so the embedded MLflow store (``mlflow/mlflow.db``), training folders (``runs/``), the stand-in models
(``models/``) and the run-config copies (``run-configs/``) are found whatever the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def export_medloc_home() -> str:
    """Set ``$MEDLOC_HOME`` to its default (``./.medloc``, absolute) when unset; return its value.

    Configs say ``${MEDLOC_HOME}/data/...``, and ZenML substitutes ``${VAR}`` placeholders itself, failing on an
    unset variable; the pipeline module calls this on import, which ``zenml pipeline run`` does before it reads
    the config.
    """
    os.environ.setdefault("MEDLOC_HOME", str((Path.cwd() / ".medloc").resolve()))
    return os.environ["MEDLOC_HOME"]


def medloc_home() -> Path:
    """The folder for local state (``$MEDLOC_HOME`` or ``./.medloc``), created on first use."""
    home = Path(os.environ.get("MEDLOC_HOME", Path.cwd() / ".medloc")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home
