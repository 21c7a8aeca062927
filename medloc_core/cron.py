"""Scheduled retraining: cron validation, schedule blocks of run configs, and the one single-machine runner.

Two ways to retrain on a schedule:

* Kubernetes: the run config's ``schedule:`` block (``cron_expression``) becomes a ZenML
  ``Schedule(cron_expression=...)`` (``pipelines/schedule.py``), which the Kubernetes orchestrator turns into a
  ``batch/v1`` CronJob (``concurrency_policy: Forbid`` in the config keeps runs from overlapping).
* One machine: the local orchestrator has no schedules, so the OS cron calls ``medloc schedule run``
  (:func:`cron_line` writes the crontab entry); :func:`run_and_report` runs the pipeline command under a lock
  file (a tick that finds the previous run still going is skipped), appends its output to a log and returns its
  exit status, which is non-zero when the pipeline failed.

Pure Python: no ZenML import. Times are the cron daemon's (or the Kubernetes controller's) local time zone.
"""

from __future__ import annotations

import contextlib
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

from medloc_core import locks

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
    *,
    config: str,
    workdir: str | os.PathLike[str],
    log_file: str | os.PathLike[str],
    lock_file: str | os.PathLike[str] | None = None,
    medloc_bin: str | os.PathLike[str] | None = None,
) -> str:
    """One crontab line that runs ``medloc schedule run -c CONFIG`` in ``workdir`` on the schedule.

    The run itself takes ``lock_file`` (default ``<workdir>/.medloc/schedule.lock``), so a tick that finds the
    previous run still going is skipped; output is appended to ``log_file``. ``%`` is escaped because cron turns
    a bare ``%`` into a newline.
    """
    schedule = validate_cron(cron_expression)
    medloc = medloc_bin or Path(sys.executable).with_name("medloc")
    parts = [
        "cd",
        shlex.quote(str(workdir)),
        "&&",
        "env",
        "ZENML_ANALYTICS_OPT_IN=false",
        shlex.quote(str(medloc)),
        "schedule",
        "run",
        "-c",
        shlex.quote(config),
        "--log-file",
        shlex.quote(str(log_file)),
        *(["--lock-file", shlex.quote(str(lock_file))] if lock_file else []),
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
    skipped: bool = False

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
    lock_file: str | os.PathLike[str] | None = None,
) -> RunReport:
    """Run ``command`` to completion and report its exit status (the pipeline's: non-zero on failure).

    Output goes to ``log_file`` (appended, framed by start/end lines) or, without one, to this process's
    stdout/stderr. ``env`` entries are added to the current environment. A timeout kills the command and
    reports return code 124, like coreutils ``timeout``; a command that cannot be started reports 127. With
    ``lock_file``, the command runs only if no other run holds that lock; otherwise nothing runs and the report
    says ``skipped`` (exit 0: an overlapping tick is not a failure).
    """
    argv = tuple(str(a) for a in command)
    if not argv:
        raise ValueError("run_and_report: command is empty")
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    log_path = Path(log_file) if log_file is not None else None
    with contextlib.ExitStack() as stack:
        if lock_file is not None and not _try_lock(stack, Path(lock_file)):
            note = f"=== medloc run skipped {started.isoformat()}: the previous run still holds {lock_file}\n"
            _write(log_path, note)
            return RunReport(argv, 0, started.isoformat(), started.isoformat(), 0.0, log_path, skipped=True)
        out = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(log_path.open("a", buffering=1))
            out.write(f"=== medloc run start {started.isoformat()} cmd: {shlex.join(argv)}\n")
        try:
            code = subprocess.run(
                argv,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                timeout=timeout_s,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code = 124
        except OSError as exc:
            code = 127
            print(f"cannot start command: {exc}", file=out or sys.stderr)
        finished = dt.datetime.now(dt.UTC)
        if out is not None:
            out.write(f"=== medloc run end {finished.isoformat()} exit {code}\n")
    return RunReport(
        command=argv,
        returncode=code,
        started_at=started.isoformat(),
        finished_at=finished.isoformat(),
        duration_s=round(time.monotonic() - t0, 3),
        log_file=log_path,
    )


def _try_lock(stack: contextlib.ExitStack, path: Path) -> bool:
    """Take an exclusive, non-blocking lock on ``path`` for the rest of ``stack``; False if it is held."""
    handle = locks.try_lock(path)
    if handle is None:
        return False
    stack.callback(handle.close)
    return True


def _write(log_path: Path | None, text: str) -> None:
    if log_path is None:
        print(text, end="", file=sys.stderr)
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as out:
        out.write(text)


def pipeline_command(config: str, *, zenml_bin: str | os.PathLike[str] | None = None) -> list[str]:
    """The command every run goes through: ``zenml pipeline run medloc_training -c <config>``."""
    zenml = Path(zenml_bin) if zenml_bin else Path(sys.executable).with_name("zenml")
    return [
        str(zenml) if zenml_bin or zenml.exists() else "zenml",
        "pipeline",
        "run",
        "medloc_training",
        "-c",
        config,
    ]
