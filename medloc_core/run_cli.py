"""``medloc run`` and ``medloc schedule``: launch the ``medloc_training`` pipeline the way users do.

Both shell out to ``zenml pipeline run medloc_training -c CONFIG`` from the repository root, so the library
itself never imports ZenML and the command that runs is exactly the documented one.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/medloc_training_local.yaml"


def project_root() -> Path:
    """The repository root: the folder that holds ``medloc_training.py`` (the pipeline shim)."""
    for folder in (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[1]):
        if (folder / "medloc_training.py").exists() and (folder / "pipelines").is_dir():
            return folder
    raise FileNotFoundError("cannot find the MedLoc repository root (a folder with medloc_training.py)")


def pipeline_command(config: str) -> list[str]:
    zenml = Path(sys.executable).with_name("zenml")
    return [str(zenml) if zenml.exists() else "zenml", "pipeline", "run", "medloc_training", "-c", config]


def run_pipeline(config: str = DEFAULT_CONFIG, *, root: Path | None = None) -> int:
    """Run the pipeline once; return its exit code (non-zero when any step failed)."""
    root = root or project_root()
    env = {"ZENML_ANALYTICS_OPT_IN": "false", **os.environ}
    if not (root / ".zen").exists():
        subprocess.run([*pipeline_command(config)[:1], "init"], cwd=root, env=env, check=True)
    command = pipeline_command(config)
    logger.info("running: %s (in %s)", shlex.join(command), root)
    return subprocess.call(command, cwd=root, env=env)


def scheduled_run(config: str, lock_file: Path, *, root: Path | None = None) -> int:
    """One scheduled run: skip (exit 0) if the previous run still holds the lock, else run and return its code."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning(
                "previous scheduled run still running (lock %s held): skipping this one", lock_file
            )
            return 0
        handle.write(f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        handle.flush()
        code = run_pipeline(config, root=root)
    if code != 0:
        logger.error("scheduled medloc_training run failed with exit code %s", code)
    return code


def cron_line(cron: str, config: str, root: Path) -> str:
    """A crontab line that runs ``medloc schedule run`` in the repository (no overlap: the run takes a lock)."""
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression must have 5 fields (minute hour day month weekday), got {cron!r}")
    medloc = Path(sys.executable).with_name("medloc")
    log = root / ".medloc" / "schedule.log"
    return f"{cron} cd {shlex.quote(str(root))} && {shlex.quote(str(medloc))} schedule run -c {shlex.quote(config)} >> {shlex.quote(str(log))} 2>&1"


def _run(args: argparse.Namespace) -> int:
    return run_pipeline(args.config)


def _schedule(args: argparse.Namespace) -> int:
    root = project_root()
    if args.action == "cron":
        print(cron_line(args.cron, args.config, root))
        return 0
    return scheduled_run(args.config, root / ".medloc" / "schedule.lock", root=root)


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the medloc_training pipeline (same as `zenml pipeline run medloc_training -c CONFIG`)",
        description="Run the medloc_training ZenML pipeline from the repository root; exits non-zero on failure.",
    )
    run.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"run config YAML (default {DEFAULT_CONFIG})"
    )
    run.set_defaults(func=_run)

    schedule = subparsers.add_parser(
        "schedule",
        help="scheduled retraining on a single machine (cron); Kubernetes uses ZenML schedules, see infra/README.md",
        description=(
            "`medloc schedule run` runs the pipeline once for a scheduler: it skips if the previous run is still "
            "going (lock file) and exits non-zero when the run fails. `medloc schedule cron --cron '0 3 * * 1'` "
            "prints the crontab line to install."
        ),
    )
    schedule.add_argument("action", choices=("run", "cron"))
    schedule.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="run config YAML")
    schedule.add_argument(
        "--cron", default="0 3 * * 1", help="cron expression for `cron` (default: Mondays 03:00)"
    )
    schedule.set_defaults(func=_schedule)
