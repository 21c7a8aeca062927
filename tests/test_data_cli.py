"""`medloc data ...` through medloc_core.cli.main and once as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medloc_core.cli import main


def test_synth_ingest_preprocess_via_main(tmp_path, capsys):
    data, out, prep = tmp_path / "d", tmp_path / "o", tmp_path / "p"
    assert (
        main(
            [
                "data",
                "synth",
                "--kind",
                "tn3k",
                "--n",
                "10",
                "--seed",
                "2",
                "--out",
                str(data),
                "--size",
                "128",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    code = main(
        [
            "data",
            "ingest",
            "--format",
            "tn3k",
            "--root",
            str(data),
            "--out",
            str(out),
            "--mask-mode",
            "largest",
            "--no-progress",
        ]
    )
    assert code == 0
    records = pd.read_parquet(out / "records.parquet")
    truth = json.loads((data / "medloc_synth.json").read_text())
    assert len(records) == 10 and set(records.record_id) == set(truth["boxes"])
    assert list(pd.read_csv(out / "quarantine.csv").columns) == [
        "source_file",
        "row",
        "field",
        "reason",
        "rows",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reader_options"]["mask_mode"] == "largest" and manifest["counts"]["input_rows"] == 10
    assert (
        main(
            [
                "data",
                "preprocess",
                "--records",
                str(out / "records.parquet"),
                "--out",
                str(prep),
                "--prior-knowledge",
            ]
        )
        == 0
    )
    prepared = pd.read_parquet(prep / "prepared.parquet")
    assert set(prepared.split) <= {"train", "val", "test"} and "in_x1" in prepared
    pm = json.loads((prep / "preprocess_manifest.json").read_text())
    assert (
        sum(len(v) for v in pm["splits"].values()) == 10
        and pm["reader_options"]["tn3k.mask_mode"] == "largest"
    )
    assert (
        main(["data", "ingest", "--format", "tn3k", "--root", str(tmp_path / "nope"), "--out", str(out)]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_cli_subprocess_synth_and_ingest(tmp_path):
    env = {**os.environ, "ZENML_ANALYTICS_OPT_IN": "false"}
    cmd = [
        sys.executable,
        "-m",
        "medloc_core.cli",
        "data",
        "synth",
        "--kind",
        "xray",
        "--n",
        "3",
        "--out",
        str(tmp_path / "x"),
        "--size",
        "96",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote 3 xray images (96x72)" in done.stdout
    cmd = [
        sys.executable,
        "-m",
        "medloc_core.cli",
        "data",
        "ingest",
        "--format",
        "coco",
        "--root",
        str(tmp_path / "x"),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    records = pd.read_parquet(tmp_path / "o" / "records.parquet")
    assert set(records.dataset) == {"heel"} and set(records.label) == {"calcaneus"}
    help_text = subprocess.run(
        [sys.executable, "-m", "medloc_core.cli", "data", "ingest", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "--max-quarantine-fraction" in help_text.stdout


@pytest.mark.slow
def test_own_data_through_the_cli_takes_the_run_configs_settings(tmp_path, capsys, monkeypatch):
    """`medloc data preprocess --config` and `medloc train --config` with the same run config agree with each
    other and with the pipeline: the preprocessing block is the defaults, the table's manifest gives training its
    answer style and pixel bounds."""
    import yaml

    monkeypatch.setenv("MEDLOC_HOME", str(tmp_path / "home"))
    config = Path(__file__).resolve().parents[1] / "configs" / "medloc_training_local.yaml"
    block = yaml.safe_load(config.read_text())["parameters"]["preprocessing"]
    data, out, prep = tmp_path / "d", tmp_path / "o", tmp_path / "p"
    assert main(["data", "synth", "--kind", "tn3k", "--n", "12", "--out", str(data), "--workers", "1"]) == 0
    assert (
        main(["data", "ingest", "--format", "tn3k", "--root", str(data), "--out", str(out), "--no-progress"])
        == 0
    )
    args = ["data", "preprocess", "--records", str(out / "records.parquet"), "--out", str(prep)]
    assert main([*args, "--config", str(config)]) == 0
    manifest = json.loads((prep / "preprocess_manifest.json").read_text())
    for key in ("answer_style", "min_pixels", "max_pixels"):
        assert manifest[key] == block[key], key
    assert main([*args, "--config", str(config), "--answer-style", "think"]) == 0  # a flag overrides its key
    assert json.loads((prep / "preprocess_manifest.json").read_text())["answer_style"] == "think"
    assert main([*args, "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main([*args, "--config", str(config)]) == 0
    capsys.readouterr()

    code = main(
        ["train", "--data", str(prep / "prepared.parquet"), "--config", str(config), "--out", str(tmp_path / "run"),
         "--set", "max_steps=1", "--set", "sft_warmup_steps=0", "--set", "save_steps=0"]
    )  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out)["steps"] == 1
