"""Scheduled retraining helpers: cron validation, ZenML schedules from run configs, single-machine cron runs.

Two ways to retrain on a schedule:

* Kubernetes: the run config's ``schedule:`` block (``cron_expression``) becomes a ZenML
  ``Schedule(cron_expression=...)``, which the Kubernetes orchestrator turns into a ``batch/v1`` CronJob
  (``concurrency_policy: Forbid`` in the config keeps runs from overlapping).
* One machine: the local orchestrator has no schedules, so the OS cron calls the pipeline. ``cron_line``
  writes the crontab entry (with ``flock -n`` so runs never overlap) and ``run_and_report`` runs the command,
  appends its output to a log and returns its exit status, which is non-zero when the pipeline failed.

ZenML is imported only inside ``build_schedule``/``schedule_from_config``; everything else is pure Python.
Times are the cron daemon's (or the Kubernetes controller's) local time zone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Macros accepted by both Vixie cron and the Kubernetes CronJob controller.
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

_MONTHS = {m: i for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), start=1)}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
# (field name, lowest, highest, names)
_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_ITEM = re.compile(r"^(?P<range>\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/(?P<step>[0-9]+))?$")


def _value(token: str, field: str, low: int, high: int, names: Mapping[str, int]) -> int:
    if token.upper() in names:
        return names[token.upper()]
    if not token.isdigit():
        raise ValueError(f"cron {field}: '{token}' is not a number or a known name")
    value = int(token)
    if not low <= value <= high:
        raise ValueError(f"cron {field}: {value} is outside {low}-{high}")
    return value


def validate_cron(expression: str) -> str:
    """Check a cron expression and return it normalized (single spaces).

    Accepts the five-field syntax (minute hour day-of-month month day-of-week) with ``*``, ``a-b``, lists
    ``a,b``, steps ``*/n`` / ``a-b/n``, month and weekday names, ``?`` for either day field, and the macros
    in ``CRON_MACROS``. That is the subset both cron and Kubernetes CronJobs accept; ``CRON_TZ=``/``TZ=``
    prefixes are rejected (use the CronJob ``timeZone`` field instead).

    Raises:
        ValueError: naming the offending field and token.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("cron expression is empty")
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text not in CRON_MACROS:
            raise ValueError(f"cron macro '{text}' is not one of {', '.join(CRON_MACROS)}")
        return text
    if "TZ=" in text:
        raise ValueError(
            "cron time-zone prefixes (CRON_TZ=/TZ=) are not supported; schedules use the host/controller zone"
        )
    parts = text.split(" ")
    if len(parts) != 5:
        raise ValueError(
            f"cron expression '{text}' has {len(parts)} fields; expected 5 (minute hour day-of-month month day-of-week)"
        )
    for part, (field, low, high, names) in zip(parts, _FIELDS):
        if part == "?" and field in ("day of month", "day of week"):
            continue
        for item in part.split(","):
            match = _ITEM.match(item)
            if not match:
                raise ValueError(f"cron {field}: cannot parse '{item}'")
            step = match.group("step")
            if step is not None and int(step) == 0:
                raise ValueError(f"cron {field}: step 0 in '{item}'")
            span = match.group("range")
            if span == "*":
                continue
            bounds = span.split("-")
            values = [_value(b, field, low, high, names) for b in bounds]
            if len(values) == 2 and values[0] > values[1]:
                raise ValueError(f"cron {field}: range '{span}' runs backwards")
    return text


def build_schedule(cron_expression: str, *, name: str | None = None) -> Any:
    """A ZenML ``Schedule`` for the cron expression (validated first). Returns ``zenml.config.schedule.Schedule``."""
    from zenml.config.schedule import Schedule

    return Schedule(name=name, cron_expression=validate_cron(cron_expression))


def load_run_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ZenML run-configuration YAML file into a dict (``{}`` for an empty file)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def schedule_block(config: Mapping[str, Any], *, source: str = "run config") -> dict[str, Any] | None:
    """The validated ``schedule:`` block of a run config, or None when there is none.

    Raises:
        ValueError: the block is not a mapping, has no ``cron_expression`` (the Kubernetes orchestrator only
            supports cron schedules) or the expression is invalid; the message names ``source``.
    """
    block = config.get("schedule")
    if block is None:
        return None
    if not isinstance(block, Mapping):
        raise ValueError(f"{source}: 'schedule' must be a mapping, got {type(block).__name__}")
    cron = block.get("cron_expression")
    if not cron:
        raise ValueError(
            f"{source}: 'schedule.cron_expression' is required (Kubernetes runs cron schedules only)"
        )
    try:
        normalized = validate_cron(cron)
    except ValueError as exc:
        raise ValueError(f"{source}: schedule.cron_expression: {exc}") from exc
    return {**block, "cron_expression": normalized}


def schedule_from_config(path: str | os.PathLike[str]) -> Any:
    """The ZenML ``Schedule`` described by the config file's ``schedule:`` block, or None without one."""
    block = schedule_block(load_run_config(path), source=str(path))
    if block is None:
        return None
    from zenml.config.schedule import Schedule

    return Schedule(**block)


def strip_schedule(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write a copy of the run config without its ``schedule:`` block (a one-off run of a scheduled config)."""
    config = load_run_config(src)
    config.pop("schedule", None)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(config, sort_keys=False))
    return dst


def cron_line(
    cron_expression: str,
    command: Sequence[str],
    *,
    workdir: str | os.PathLike[str],
    log_file: str | os.PathLike[str],
    lock_file: str | os.PathLike[str] = "/tmp/medloc-retrain.lock",
    env: Mapping[str, str] | None = None,
) -> str:
    """One crontab line that runs ``command`` in ``workdir`` on the schedule, never twice at once.

    ``flock -n`` makes a tick that finds the previous run still going exit 1 at once (cron reports it) instead
    of starting a second run. Output is appended to ``log_file``. ``%`` is escaped because cron turns a bare
    ``%`` into a newline.
    """
    schedule = validate_cron(cron_expression)
    if not command:
        raise ValueError("cron_line: command is empty")
    assignments = [f"{key}={shlex.quote(value)}" for key, value in (env or {}).items()]
    parts = [
        "cd",
        shlex.quote(str(workdir)),
        "&&",
        *(["env", *assignments] if assignments else []),
        "flock",
        "-n",
        shlex.quote(str(lock_file)),
        *(shlex.quote(str(arg)) for arg in command),
        ">>",
        shlex.quote(str(log_file)),
        "2>&1",
    ]
    return f"{schedule} " + " ".join(parts).replace("%", r"\%")


@dataclass(frozen=True)
class RunReport:
    """Outcome of one ``run_and_report`` call. ``duration_s`` in seconds; times are UTC ISO-8601."""

    command: tuple[str, ...]
    returncode: int
    started_at: str
    finished_at: str
    duration_s: float
    log_file: Path | None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_and_report(
    command: Sequence[str],
    *,
    log_file: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> RunReport:
    """Run ``command`` to completion and report its exit status (the pipeline's: non-zero on failure).

    Output goes to ``log_file`` (appended, framed by start/end lines) or, without one, to this process's
    stdout/stderr. ``env`` entries are added to the current environment. A timeout kills the command and
    reports return code 124, like coreutils ``timeout``; a command that cannot be started reports 127.
    """
    argv = tuple(str(a) for a in command)
    if not argv:
        raise ValueError("run_and_report: command is empty")
    full_env = {**os.environ, **(env or {})}
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    log_path = Path(log_file) if log_file is not None else None
    out = None
    try:
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = log_path.open("a", buffering=1)
            out.write(f"=== medloc run start {started.isoformat()} cmd: {shlex.join(argv)}\n")
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                timeout=timeout_s,
                check=False,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = 124
        except OSError as exc:
            code = 127
            if out is not None:
                out.write(f"cannot start command: {exc}\n")
            else:
                print(f"cannot start command: {exc}", file=sys.stderr)
        finished = dt.datetime.now(dt.UTC)
        if out is not None:
            out.write(f"=== medloc run end {finished.isoformat()} exit {code}\n")
    finally:
        if out is not None:
            out.close()
    return RunReport(
        command=argv,
        returncode=code,
        started_at=started.isoformat(),
        finished_at=finished.isoformat(),
        duration_s=round(time.monotonic() - t0, 3),
        log_file=log_path,
    )


def default_retrain_command(config: str, *, zenml_bin: str = "zenml") -> list[str]:
    """The command a single-machine schedule runs: ``zenml pipeline run medloc_training -c <config>``."""
    return [zenml_bin, "pipeline", "run", "medloc_training", "-c", config]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medloc_core.scheduling {validate,cron-line,run,strip-schedule}``."""
    parser = argparse.ArgumentParser(
        prog="python -m medloc_core.scheduling", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_val = sub.add_parser("validate", help="validate a cron expression or a run config's schedule block")
    p_val.add_argument("target", help="cron expression, or path to a run-config YAML")
    p_line = sub.add_parser("cron-line", help="print the crontab line for single-machine retraining")
    p_line.add_argument("--cron", required=True)
    p_line.add_argument("--config", default="configs/medloc_training_local.yaml")
    p_line.add_argument("--workdir", default=os.getcwd())
    p_line.add_argument("--log-file", default=".medloc/logs/retrain.log")
    p_line.add_argument("--lock-file", default="/tmp/medloc-retrain.lock")
    p_run = sub.add_parser("run", help="run a command, log it, exit with its status")
    p_run.add_argument("--log-file")
    p_run.add_argument("--timeout-s", type=float)
    p_run.add_argument("command", nargs=argparse.REMAINDER, help="-- command args...")
    p_strip = sub.add_parser("strip-schedule", help="copy a run config without its schedule block")
    p_strip.add_argument("config")
    p_strip.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)

    try:
        if args.cmd == "validate":
            if Path(args.target).is_file():
                block = schedule_block(load_run_config(args.target), source=args.target)
                print(block["cron_expression"] if block else "no schedule block")
            else:
                print(validate_cron(args.target))
            return 0
        if args.cmd == "cron-line":
            bin_dir = Path(sys.executable).parent
            inner = default_retrain_command(args.config, zenml_bin=str(bin_dir / "zenml"))
            command = [sys.executable, "-m", "medloc_core.scheduling", "run", "--", *inner]
            print(
                cron_line(
                    args.cron,
                    command,
                    workdir=args.workdir,
                    log_file=args.log_file,
                    lock_file=args.lock_file,
                    env={"ZENML_ANALYTICS_OPT_IN": "false"},
                )
            )
            return 0
        if args.cmd == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            report = run_and_report(command, log_file=args.log_file, timeout_s=args.timeout_s)
            print(
                f"medloc run: exit {report.returncode} after {report.duration_s:.1f} s ({shlex.join(report.command)})",
                file=sys.stderr,
            )
            return report.returncode
        print(strip_schedule(args.config, args.output))
        return 0
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
