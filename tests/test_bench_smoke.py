"""The benchmark scripts still run, on a tiny budget, writing to a temp folder (never over bench/results/).

Figures are not checked here (speed targets live in bench/, never in timed tests); only that each script ends
with exit code 0 and writes well-formed results for what it was asked to measure.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_", "MEDLOC_"))}
    env.update(
        MEDLOC_BENCH_RESULTS=str(tmp_path / "results"), HF_HUB_OFFLINE="1", ZENML_ANALYTICS_OPT_IN="false"
    )
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_data_bench_prints_images_per_second(tmp_path: Path) -> None:
    out = _run(tmp_path, "bench/data.py", "--n", "12", "--root", str(tmp_path / "ham"))
    assert "images/s" in out.stdout


@pytest.mark.slow
def test_curriculum_bench_writes_a_row_per_schedule_and_seed(tmp_path: Path) -> None:
    _run(
        tmp_path, "bench/curriculum.py", "--regime", "sparse", "--seeds", "0", "--schedules", "medloc", "fixed",
        "medloc_spread", "--steps", "3", "--sft-steps", "10", "--n", "24", "--no-mlflow",
        "--work", str(tmp_path / "work"), "--tau0", "0.3",
    )  # fmt: skip
    with (tmp_path / "results" / "curriculum_sparse.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["schedule"], r["seed"], r["steps"]) for r in rows] == [
        ("medloc", "0", "3"),
        ("fixed", "0", "3"),
        ("medloc_spread", "0", "3"),
    ]
    assert float(rows[0]["final_tau"]) == 0.3 and float(rows[1]["final_tau"]) == 0.5
    for row in rows:  # the dead groups split into all-hit and all-miss
        dead, hit, miss = (float(row[k]) for k in ("dead_acc_early", "dead_hit_early", "dead_miss_early"))
        assert abs(dead - hit - miss) < 1e-6
    report = (tmp_path / "results" / "curriculum_sparse.md").read_text()
    assert "regime `sparse`" in report and "| fixed | 0 | " in report  # the paired section, per seed
    assert (tmp_path / "results" / "curriculum_sparse.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.zenml_repository  # the bench runs `zenml pipeline run` from the repository root
def test_overhead_bench_measures_the_bare_loop(tmp_path: Path) -> None:
    # --skip-pipeline: the pipeline half is `zenml pipeline run`, which test_pipeline_e2e already runs (CI time).
    _run(
        tmp_path, "bench/overhead.py", "--steps", "4", "--sft-steps", "10", "--work", str(tmp_path / "work"),
        "--skip-pipeline",
    )  # fmt: skip
    res = json.loads((tmp_path / "results" / "overhead.json").read_text())
    assert res["pipeline"]["returncode"] is None and res.get("ratio") is None
    assert [run["steps"] for run in res["bare"]] == [4, 4]
    assert all(0 < run["reward_plus_scheduler_share"] < 1 for run in res["bare"])
    assert res["iou"]["pairs"] == 1_000_000 and res["iou"]["best_s"] > 0
    assert (tmp_path / "results" / "overhead.png").stat().st_size > 0


@pytest.mark.slow
def test_sft_handover_bench_scores_every_check_and_the_end(tmp_path: Path) -> None:
    _run(
        tmp_path, "bench/sft_handover.py", "--seeds", "0", "--steps", "4", "--every", "2", "--n", "30",
        "--work", str(tmp_path / "work"),
    )  # fmt: skip
    lines = (tmp_path / "results" / "sft_handover.md").read_text().splitlines()
    rows = [line.strip("| ").split(" | ") for line in lines if line.startswith("| 0 |")]
    assert [r[1] for r in rows] == ["2", "4"]  # a check at step 2 and the end (4)
    assert all(0.0 <= float(v) <= 1.0 for r in rows for v in r[2:])


@pytest.mark.slow
def test_gpu_bench_prints_a_row_per_variant_that_trained(tmp_path: Path) -> None:
    out = _run(tmp_path, "bench/gpu.py", "--steps", "2", "--n", "12", "--work", str(tmp_path / "work"))
    assert "| adapter | grad. checkpointing | step (s) |" in out.stdout
    result = json.loads((tmp_path / "results" / "gpu.json").read_text())
    import torch

    assert result["cuda"] == torch.cuda.is_available()  # the bench runs on the GPU when there is one
    rows = result["rows"]
    assert [(r["adapter"], r["gradient_checkpointing"]) for r in rows] == [
        (a, g) for a in ("full", "lora", "mlae") for g in (False, True)
    ]
    for r in rows:
        assert "error" not in r, r
        changed, sampled = (int(v) for v in r["updated"].split("/"))
        assert sampled > 0 and changed == sampled, r  # every sampled trainable tensor moved
        assert r["step_s"] > 0 and r["gen_tokens_per_step"] > 0


@pytest.mark.slow
def test_seed_sweep_prints_a_row_per_seed_with_its_paired_gain(tmp_path: Path) -> None:
    out = _run(
        tmp_path, "bench/seed_sweep.py", "--seeds", "0", "1", "--jobs", "2", "--n", "40", "--steps", "2",
        "--sft-steps", "4", "--work", str(tmp_path / "work"),
    )  # fmt: skip
    rows = json.loads((tmp_path / "results" / "seed_sweep.json").read_text())
    assert [r["seed"] for r in sorted(rows, key=lambda r: r["seed"])] == [0, 1]
    for r in rows:
        assert r["gain_ci"][0] <= r["gain"] <= r["gain_ci"][1] and r["n_test"] > 0
        assert len(r["curve"]) == 2 and 0.0 <= r["dead"] <= 1.0
    table = (tmp_path / "results" / "seed_sweep.md").read_text()
    assert "| 0 |" in table and "| 1 |" in table and "Mean gain" in table and "Mean gain" in out.stdout


@pytest.mark.slow
def test_step_profile_times_the_parts_of_a_step(tmp_path: Path) -> None:
    out = _run(
        tmp_path, "bench/step_profile.py", "--steps", "3", "--sft-steps", "4", "--n", "40",
        "--work", str(tmp_path / "work"),
    )  # fmt: skip
    text = (tmp_path / "results" / "step_profile.md").read_text()
    assert "s per GRPO step" in text and "| generation (model.generate) |" in text
    assert "| backward |" in text and "s per GRPO step" in out.stdout
