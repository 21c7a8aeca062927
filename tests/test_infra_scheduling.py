"""medloc_core.scheduling: cron validation, crontab line, run-and-report exit codes, schedule blocks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medloc_core import scheduling
from medloc_core.scheduling import (
    build_schedule,
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


def test_cron_line_runs_in_repo_with_lock_and_log():
    line = cron_line(
        "0 3 * * 1",
        ["/opt/venv/bin/zenml", "pipeline", "run", "medloc_training", "-c", "configs/my config.yaml"],
        workdir="/srv/medloc",
        log_file="/var/log/medloc/retrain-%Y.log",
        lock_file="/tmp/medloc.lock",
        env={"ZENML_ANALYTICS_OPT_IN": "false"},
    )
    assert line == (
        "0 3 * * 1 cd /srv/medloc && env ZENML_ANALYTICS_OPT_IN=false flock -n /tmp/medloc.lock "
        "/opt/venv/bin/zenml pipeline run medloc_training -c 'configs/my config.yaml' "
        r">> /var/log/medloc/retrain-\%Y.log 2>&1"
    )
    with pytest.raises(ValueError):
        cron_line("bad", ["true"], workdir="/", log_file="/dev/null")


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


def test_module_cli_exits_non_zero_on_failure(tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medloc_core.scheduling",
            "run",
            "--log-file",
            str(tmp_path / "r.log"),
            "--",
            sys.executable,
            "-c",
            "import sys; sys.exit(7)",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 7
    assert "exit 7" in proc.stderr
    assert scheduling.main(["validate", str(REPO / "configs" / "medloc_training_k8s.yaml")]) == 0
    assert scheduling.main(["validate", "0 25 * * *"]) == 2


def test_cron_line_cli_prints_a_valid_line(capsys: pytest.CaptureFixture[str]):
    assert scheduling.main(["cron-line", "--cron", "0 4 * * *", "--workdir", "/srv/medloc"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("0 4 * * * cd /srv/medloc && env ZENML_ANALYTICS_OPT_IN=false flock -n ")
    assert "-m medloc_core.scheduling run -- " in line
    assert line.endswith(
        "pipeline run medloc_training -c configs/medloc_training_local.yaml >> .medloc/logs/retrain.log 2>&1"
    )
