"""``medloc run`` and ``medloc schedule``: launch the ``medloc_training`` pipeline the way users do.

Both run ``zenml pipeline run medloc_training -c CONFIG`` from the repository root as a child process (the
library never imports ZenML, and the command that runs is exactly the documented one) through
``medloc_core.cron.run_and_report``, the one runner: ``medloc schedule run`` adds a lock file and a log.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from medloc_core import cron
from medloc_core.environment import project_root

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/medloc_training_local.yaml"


def run_pipeline(
    config: str = DEFAULT_CONFIG,
    *,
    root: Path | None = None,
    log_file: Path | None = None,
    lock_file: Path | None = None,
    timeout_s: float | None = None,
) -> cron.RunReport:
    """Run the pipeline once from the repository root (``zenml init`` there first if needed)."""
    root = root or project_root()
    env = {"ZENML_ANALYTICS_OPT_IN": os.environ.get("ZENML_ANALYTICS_OPT_IN", "false")}
    command = cron.pipeline_command(config)
    if not (root / ".zen").exists():
        subprocess.run([command[0], "init"], cwd=root, env={**os.environ, **env}, check=True)
    logger.info("running: %s (in %s)", shlex.join(command), root)
    return cron.run_and_report(
        command, cwd=root, env=env, log_file=log_file, lock_file=lock_file, timeout_s=timeout_s
    )


def _run(args: argparse.Namespace) -> int:
    return run_pipeline(args.config).returncode


def _schedule_run(args: argparse.Namespace) -> int:
    root = project_root()
    report = run_pipeline(
        args.config,
        root=root,
        log_file=args.log_file,
        lock_file=args.lock_file or root / ".medloc" / "schedule.lock",
        timeout_s=args.timeout_s,
    )
    if report.skipped:
        logger.warning("the previous scheduled run still holds the lock: skipped this one")
    elif not report.ok:
        logger.error("scheduled medloc_training run failed with exit code %s", report.returncode)
    print(f"medloc schedule run: exit {report.returncode} after {report.duration_s:.1f} s", file=sys.stderr)
    return report.returncode


def _schedule_cron(args: argparse.Namespace) -> int:
    root = project_root()
    log_file = args.log_file or root / ".medloc" / "logs" / "retrain.log"
    print(cron.cron_line(args.cron, config=args.config, workdir=root, log_file=log_file))
    return 0


def _schedule_validate(args: argparse.Namespace) -> int:
    if Path(args.target).is_file():
        block = cron.schedule_block(cron.load_run_config(args.target), source=args.target)
        print(block["cron_expression"] if block else "no schedule block")
    else:
        print(cron.validate_cron(args.target))
    return 0


def _schedule_strip(args: argparse.Namespace) -> int:
    print(cron.strip_schedule(args.config, args.output))
    return 0


def _guarded(handler):  # one-line errors with exit 2 for bad cron expressions or config files
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


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
            "`medloc schedule cron --cron '0 3 * * 1'` prints the crontab line to install; the line calls "
            "`medloc schedule run`, which runs the pipeline once, skips if the previous run still holds the lock, "
            "and exits non-zero when the run fails. `validate` checks a cron expression or a config's schedule "
            "block; `strip-schedule` copies a config without it (a one-off run of a scheduled recipe)."
        ),
    )
    schedule.set_defaults(func=lambda args: (schedule.print_help(), 2)[1])
    actions = schedule.add_subparsers(dest="action", metavar="ACTION")
    once = actions.add_parser("run", help="run the pipeline once, under the schedule's lock")
    once.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="run config YAML")
    once.add_argument("--log-file", type=Path, help="append the run's output here (default: this terminal)")
    once.add_argument("--lock-file", type=Path, help="default: .medloc/schedule.lock in the repository")
    once.add_argument("--timeout-s", type=float, help="kill the run after this many seconds (exit 124)")
    once.set_defaults(func=_guarded(_schedule_run))
    cron_cmd = actions.add_parser("cron", help="print the crontab line for single-machine retraining")
    cron_cmd.add_argument("--cron", default="0 3 * * 1", help="cron expression (default: Mondays 03:00)")
    cron_cmd.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="run config YAML")
    cron_cmd.add_argument("--log-file", type=Path, help="default: .medloc/logs/retrain.log in the repository")
    cron_cmd.set_defaults(func=_guarded(_schedule_cron))
    validate = actions.add_parser(
        "validate", help="validate a cron expression or a run config's schedule block"
    )
    validate.add_argument("target", help="cron expression, or path to a run-config YAML")
    validate.set_defaults(func=_guarded(_schedule_validate))
    strip = actions.add_parser("strip-schedule", help="copy a run config without its schedule block")
    strip.add_argument("config")
    strip.add_argument("-o", "--output", required=True)
    strip.set_defaults(func=_guarded(_schedule_strip))
