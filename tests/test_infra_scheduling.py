"""Scheduling: cron validation, schedule blocks, the crontab line, the one runner (exit codes, lock) and
`medloc schedule`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medloc_core.cli import main as medloc
from medloc_core.cron import (
    cron_line,
    run_and_report,
    schedule_block,
    strip_schedule,
    validate_cron,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("expr", "normalized"),
    [
        ("0 3 * * 1", "0 3 * * 1"),
        ("  */15  0-6/2 1,15 JAN-MAR mon-fri ", "*/15 0-6/2 1,15 JAN-MAR mon-fri"),
        ("0 0 ? * SUN", "0 0 ? * SUN"),
        ("30 2 * * 7", "30 2 * * 7"),
        ("@daily", "@daily"),
    ],
)
def test_valid_cron(expr: str, normalized: str):
    assert validate_cron(expr) == normalized


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "empty"),
        ("0 3 * *", "has 4 fields"),
        ("60 3 * * 1", r"minute: 60 is outside 0-59"),
        ("0 24 * * 1", r"hour: 24 is outside 0-23"),
        ("0 3 0 * *", r"day of month: 0 is outside 1-31"),
        ("0 3 * FOO *", r"month: 'FOO' is not a number"),
        ("0 3 * * 1-0", "runs backwards"),
        ("*/0 3 * * *", "step 0"),
        ("0 3 ? * *x", "cannot parse"),
        ("@fortnightly", "not one of"),
        ("CRON_TZ=UTC 0 3 * * 1", "time-zone"),
    ],
)
def test_invalid_cron(expr: str, message: str):
    with pytest.raises(ValueError, match=message):
        validate_cron(expr)


def test_build_schedule_is_a_zenml_cron_schedule():
    from zenml.config.schedule import Schedule

    from pipelines.schedule import build_schedule

    schedule = build_schedule(" 0  3 * * 1", name="weekly")
    assert isinstance(schedule, Schedule)
    assert (schedule.cron_expression, schedule.name, schedule.interval_second) == (
        "0 3 * * 1",
        "weekly",
        None,
    )
    with pytest.raises(ValueError, match="minute"):
        build_schedule("99 * * * *")


def test_schedule_block_errors_name_the_source():
    assert schedule_block({}) is None
    with pytest.raises(ValueError, match=r"cfg\.yaml: 'schedule.cron_expression' is required"):
        schedule_block({"schedule": {"interval_second": 60}}, source="cfg.yaml")
    with pytest.raises(ValueError, match=r"cfg\.yaml: schedule.cron_expression: cron hour"):
        schedule_block({"schedule": {"cron_expression": "0 99 * * *"}}, source="cfg.yaml")


def test_strip_schedule_keeps_everything_else(tmp_path: Path):
    src = REPO / "configs" / "medloc_training_k8s.yaml"
    out = strip_schedule(src, tmp_path / "once.yaml")
    original, stripped = yaml.safe_load(src.read_text()), yaml.safe_load(out.read_text())
    assert "schedule" in original and "schedule" not in stripped
    original.pop("schedule")
    assert stripped == original


def test_cron_line_runs_medloc_schedule_in_the_repo_with_a_log():
    line = cron_line(
        "0 3 * * 1",
        config="configs/my config.yaml",
        workdir="/srv/medloc",
        log_file="/var/log/medloc/retrain-%Y.log",
        medloc_bin="/opt/venv/bin/medloc",
    )
    assert line == (
        "0 3 * * 1 cd /srv/medloc && env ZENML_ANALYTICS_OPT_IN=false /opt/venv/bin/medloc schedule run "
        r"-c 'configs/my config.yaml' --log-file /var/log/medloc/retrain-\%Y.log"
    )
    with pytest.raises(ValueError):
        cron_line("bad", config="c.yaml", workdir="/", log_file="/dev/null")


def test_run_and_report_returns_the_exit_status(tmp_path: Path):
    log = tmp_path / "logs" / "run.log"
    ok = run_and_report([sys.executable, "-c", "print('step ok')"], log_file=log)
    failed = run_and_report([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], log_file=log)
    assert (ok.returncode, ok.ok) == (0, True)
    assert (failed.returncode, failed.ok) == (3, False)
    text = log.read_text()
    assert "step ok" in text and "boom" in text
    assert text.count("=== medloc run start") == 2 and "exit 3" in text
    assert run_and_report([str(tmp_path / "no-such-binary")]).returncode == 127
    slow = run_and_report([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5)
    assert slow.returncode == 124 and slow.duration_s < 20


def test_a_run_that_finds_the_lock_held_is_skipped(tmp_path: Path):
    """The previous run still going (another process holds the lock): nothing runs, exit 0, the log says so."""
    lock, log, marker = tmp_path / "schedule.lock", tmp_path / "r.log", tmp_path / "ran"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; h = open(sys.argv[1], 'w'); fcntl.flock(h, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        touch = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
        report = run_and_report(touch, log_file=log, lock_file=lock)
        assert report.skipped and report.returncode == 0 and not marker.exists()
        assert "skipped" in log.read_text()
    finally:
        holder.kill()
        holder.wait()
    report = run_and_report(touch, log_file=log, lock_file=lock)  # the lock is free again: it runs
    assert not report.skipped and report.ok and marker.exists()


def test_medloc_schedule_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert medloc(["schedule", "validate", str(REPO / "configs" / "medloc_training_k8s.yaml")]) == 0
    assert capsys.readouterr().out.strip() == "0 3 * * 1"
    assert medloc(["schedule", "validate", "0 25 * * *"]) == 2
    assert "hour: 25 is outside" in capsys.readouterr().err
    assert (
        medloc(["schedule", "cron", "--cron", "0 4 * * *", "-c", "configs/medloc_training_local.yaml"]) == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"0 4 * * * cd {REPO} && env ZENML_ANALYTICS_OPT_IN=false ")
    assert " schedule run -c configs/medloc_training_local.yaml --log-file " in line
    out = tmp_path / "once.yaml"
    assert (
        medloc(
            ["schedule", "strip-schedule", str(REPO / "configs" / "medloc_training_k8s.yaml"), "-o", str(out)]
        )
        == 0
    )
    assert "schedule" not in yaml.safe_load(out.read_text())
