"""One environment for every entry point of the project: ``make run``, ``medloc`` (and so the cron line, which
runs ``medloc schedule run``), ``medloc ui`` and ``medloc serve`` all find the same ZenML store, MLflow store and
state folder, as absolute paths under the project root, whatever the working directory.

The Makefile exports the same names with the same defaults (``tests/test_environment.py`` checks that); a
variable already set wins everywhere, so pointing ``MEDLOC_HOME``, ``ZENML_CONFIG_PATH`` or
``MLFLOW_TRACKING_URI`` elsewhere moves every entry point at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

#: Progress bars of the libraries we call: one line per update in a log file (our own progress lines replace
#: them). Set for every run, the pipeline's included.
QUIET = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights", "Writing model shards"
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # MLflow's "Downloading artifacts"
    "TOKENIZERS_PARALLELISM": "false",
}


def project_root() -> Path:
    """The repository root: the folder that holds ``medloc_training.py`` (the pipeline shim) and ``pipelines/``,
    searched from the working directory up, then from this package's own location (an editable install)."""
    for folder in (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[1]):
        if (folder / "medloc_training.py").exists() and (folder / "pipelines").is_dir():
            return folder
    raise FileNotFoundError("cannot find the MedLoc repository root (a folder with medloc_training.py)")


def project_environment(root: str | os.PathLike[str]) -> dict[str, str]:
    """The variables every entry point runs with, for the project at ``root`` (absolute paths)."""
    root = Path(root).resolve()
    return {
        "MEDLOC_HOME": str(root / ".medloc"),
        "ZENML_CONFIG_PATH": str(root / ".medloc" / "zenml" / "config"),
        "ZENML_LOCAL_STORES_PATH": str(root / ".medloc" / "zenml" / "stores"),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_DISABLE_INTERACTIVE_INPUT": "true",
        "HF_HUB_OFFLINE": "1",
        **QUIET,
    }


def apply(variables: Mapping[str, str]) -> dict[str, str]:
    """Set each variable that is not set yet (what is set wins); return the ones this call set."""
    added = {k: v for k, v in variables.items() if k not in os.environ}
    os.environ.update(added)
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":
        # huggingface_hub and transformers read the variable once, at import: tell them if they came first
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        if "transformers" in sys.modules:
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
    return added
