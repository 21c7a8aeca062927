"""What does the system cost? Pipeline vs bare training step time, reward + scheduler share, IoU throughput, RSS.

    .venv/bin/python bench/overhead.py                       # the README numbers (~2-5 min on 2 shared cores)
    .venv/bin/python bench/overhead.py --steps 10 --sft-steps 20   # smoke run

1. Vectorized IoU: ``medloc_core.boxes.iou_pairs`` on 1e6 random box pairs (best of 5; target < 0.2 s).
2. Seconds per GRPO step of the full ZenML + MLflow pipeline (``zenml pipeline run medloc_training -c <config>``,
   run in a subprocess with ZenML, MLflow and MEDLOC_HOME state in a temp folder) vs a bare ``train()`` call on
   the same data and training config (target ratio <= 1.05). The default config is
   ``configs/medloc_training_local.yaml`` (the embedded default run) with its data and model folders moved to the
   temp folder. Bare runs go before and after the pipeline run, to bracket load drift on a shared machine; the
   ratio uses their mean. Seconds per step = mean wall time of GRPO steps after the first (``TrainingResult``;
   in the pipeline, its ``train/summary/seconds_per_step`` MLflow metric, cross-checked with the spacing of the
   per-step MLflow metric timestamps).
3. Reward + scheduler time per step as a share of step time (target <= 1 %): in the bare runs the reward
   functions and ``schedule.observe`` are wrapped with timers (and, separately, the whole curriculum callback).
4. Peak RSS: of the pipeline process (``getrusage`` of the child) and the training's own ``peak_rss_mb``.

Writes ``bench/results/overhead.json``, ``overhead.md`` and ``overhead.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path to the repo root; must precede torch)

DEFAULT_CONFIG = common.REPO_ROOT / "configs" / "medloc_training_local.yaml"


# ------------------------------------------------------------------------------------------------- IoU


def iou_throughput(n: int = 1_000_000, repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """Seconds for ``iou_pairs`` on ``n`` random (x1, y1, x2, y2) pixel box pairs: best and mean of ``repeats``."""
    import numpy as np

    from medloc_core.boxes import iou_pairs

    rng = np.random.default_rng(seed)

    def boxes() -> Any:
        xy = rng.uniform(0, 1000, size=(n, 2))
        wh = rng.uniform(1, 300, size=(n, 2))
        return np.concatenate([xy, xy + wh], axis=1)

    a, b = boxes(), boxes()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = iou_pairs(a, b)
        times.append(time.perf_counter() - t0)
    assert out.shape == (n,) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    return {"pairs": n, "best_s": min(times), "mean_s": sum(times) / len(times)}


# -------------------------------------------------------------------------------------------- configs


def bench_config(src: Path, work: Path, steps: int | None, sft_steps: int | None) -> dict[str, Any]:
    """The run config with every local path moved under ``work`` (and optional step overrides)."""
    import yaml

    cfg = yaml.safe_load(src.read_text())
    params = cfg.setdefault("parameters", {})
    for i, source in enumerate(params.get("data", {}).get("sources") or []):
        source["root"] = str(work / "data" / f"{i}-{Path(source['root']).name}")
    training = params.setdefault("training", {})
    training["tiny_model_dir"] = str(work / "models")
    if steps is not None:
        training["max_steps"] = steps
    if sft_steps is not None:
        training["sft_warmup_steps"] = sft_steps
    training["progress"] = False
    return cfg


def state_env(work: Path, threads: int) -> dict[str, str]:
    """Environment that keeps ZenML, MLflow and MedLoc state in ``work``."""
    env = dict(os.environ)
    env.update(
        ZENML_ANALYTICS_OPT_IN="false",
        ZENML_CONFIG_PATH=str(work / "zenml" / "config"),
        ZENML_LOCAL_STORES_PATH=str(work / "zenml" / "stores"),
        ZENML_DISABLE_INTERACTIVE_INPUT="true",
        MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
        MEDLOC_HOME=str(work / "home"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
    )
    return env


# --------------------------------------------------------------------------------------------- pipeline


def run_pipeline(config_path: Path, work: Path, threads: int) -> dict[str, Any]:
    """Run the pipeline once in a subprocess; return its exit code, wall time, peak RSS and MLflow step timing."""
    env = state_env(work, threads)
    zenml = Path(sys.executable).with_name("zenml")
    root = common.REPO_ROOT
    if not (root / ".zen").exists():  # as `make run` / `medloc run` do; .zen/ is git-ignored
        subprocess.run([str(zenml), "init"], cwd=root, env=env, check=True, capture_output=True)
    log = work / "pipeline.log"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.call(
            [str(zenml), "pipeline", "run", "medloc_training", "-c", str(config_path)],
            cwd=root,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    wall = time.perf_counter() - t0
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out: dict[str, Any] = {
        "returncode": rc,
        "wall_s": wall,
        "process_peak_rss_mb": rss_kib / 1024,
        "log": str(log),
    }
    out.update(pipeline_mlflow_timing(env["MLFLOW_TRACKING_URI"]))
    return out


def pipeline_mlflow_timing(uri: str) -> dict[str, Any]:
    """Seconds/step and peak RSS the pipeline's training step logged to MLflow (experiment ``medloc``)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("medloc")
    if exp is None:
        return {"mlflow_error": "no 'medloc' experiment: the pipeline logged nothing"}
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return {"mlflow_error": "no MLflow run"}
    run = runs[0]
    m = run.data.metrics
    out: dict[str, Any] = {"mlflow_run_id": run.info.run_id}
    if "train/summary/seconds_per_step" in m:
        out["seconds_per_step"] = m["train/summary/seconds_per_step"]
    if "train/summary/peak_rss_mb" in m:
        out["training_peak_rss_mb"] = m["train/summary/peak_rss_mb"]
    hist = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda x: x.step)
    if len(hist) > 2:
        # spacing of per-step log timestamps (ms), after the first step, as a cross-check
        gaps = [(b.timestamp - a.timestamp) / 1000 for a, b in zip(hist[1:], hist[2:])]
        out["seconds_per_step_from_timestamps"] = sum(gaps) / len(gaps)
        out["median_seconds_per_step_from_timestamps"] = statistics.median(gaps)
        out["logged_steps"] = len(hist)
    return out


# ------------------------------------------------------------------------------------------------ bare


class _Timer:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        return timed


def run_bare(cfg: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    """``train()``'s pieces on the pipeline's data and training config, with timers on reward and scheduler."""
    from medloc_core.data.preprocess import preprocess
    from medloc_core.data.sources import ingest_sources
    from medloc_core.training.config import TrainingConfig
    from medloc_core.training.session import prepare_training

    params = cfg["parameters"]
    data = params.get("data") or {}
    records, _, _ = ingest_sources(
        data["sources"], max_quarantine_fraction=float(data.get("max_quarantine_fraction", 0.2))
    )
    prep_cfg = dict(params.get("preprocessing") or {})
    if "split_fractions" in prep_cfg:
        prep_cfg["split_fractions"] = tuple(prep_cfg["split_fractions"])
    prepared, _ = preprocess(records, **prep_cfg)
    config = TrainingConfig.model_validate(params["training"])
    t0 = time.perf_counter()
    session = prepare_training(prepared, config, work / name, resume=False)
    reward_t, observe_t, callback_t = _Timer(), _Timer(), _Timer()
    trainer = session.trainer
    trainer.reward_funcs = [reward_t.wrap(f) for f in trainer.reward_funcs]
    session.schedule.observe = observe_t.wrap(session.schedule.observe)
    session.callback.on_step_end = callback_t.wrap(session.callback.on_step_end)
    t1 = time.perf_counter()
    result = session.run()
    t_run = time.perf_counter() - t1
    steps = result.steps
    sps = result.seconds_per_step
    return {
        "seconds_per_step": sps,
        "median_seconds_per_step": statistics.median(session.callback.step_seconds[1:] or [sps]),
        "steps": steps,
        "prepare_s": t1 - t0,
        "train_s": t_run,
        "reward_s_per_step": reward_t.seconds / steps,
        "observe_s_per_step": observe_t.seconds / steps,
        "callback_s_per_step": callback_t.seconds / steps,
        "reward_calls": reward_t.calls,
        "reward_plus_scheduler_share": (reward_t.seconds + observe_t.seconds) / steps / sps,
        "callback_share": callback_t.seconds / steps / sps,
        "training_peak_rss_mb": result.peak_rss_mb,
        "torch_threads": _torch_threads(),
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def mlflow_step_logging(history_path: Path, work: Path) -> dict[str, float]:
    """Seconds per ``mlflow.log_metrics`` call when one training step's metrics (the rows of a real
    ``history.jsonl``) go to a fresh SQLite store: what the pipeline's default metrics sink adds per step."""
    import mlflow

    rows = [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()]
    mlflow.set_tracking_uri(f"sqlite:///{work / 'log_cost.db'}")
    mlflow.set_experiment("log-cost")
    times = []
    with mlflow.start_run():
        for row in rows:
            metrics = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, int | float)}
            t0 = time.perf_counter()
            mlflow.log_metrics(metrics, step=int(row["step"]))
            times.append(time.perf_counter() - t0)
    return {
        "calls": len(times),
        "metrics_per_call": len(rows[0]) - 1 if rows else 0,
        "mean_s": sum(times) / len(times),
        "median_s": statistics.median(times),
    }


# ------------------------------------------------------------------------------------------- reporting


def report(res: dict[str, Any]) -> str:
    iou = res["iou"]
    bare = res["bare"]
    pipe = res["pipeline"]
    bare_sps = [b["seconds_per_step"] for b in bare]
    mean_bare = sum(bare_sps) / len(bare_sps)
    lines = [f"Overhead benchmark. {res['note']}", ""]
    lines += [
        "| figure | value | target |",
        "|---|---|---|",
        f"| iou_pairs, {iou['pairs']:.0e} pairs | {iou['best_s']:.3f} s best, {iou['mean_s']:.3f} s mean of 5 | < 0.2 s |",
    ]
    for i, b in enumerate(bare):
        lines.append(f"| bare train(), run {i + 1}: s/step | {b['seconds_per_step']:.3f} | |")
    if "seconds_per_step" in pipe:
        ratio = pipe["seconds_per_step"] / mean_bare
        res["ratio"] = ratio
        lines.append(f"| pipeline train step: s/step | {pipe['seconds_per_step']:.3f} | |")
        lines.append(f"| pipeline / bare (mean of bare runs) | {ratio:.3f}x | <= 1.05x |")
    else:
        lines.append(
            f"| pipeline train step: s/step | not measured ({pipe.get('mlflow_error', 'no metric')}) | |"
        )
    if "seconds_per_step_from_timestamps" in pipe:
        lines.append(
            f"| pipeline s/step from MLflow metric timestamps (cross-check) | {pipe['seconds_per_step_from_timestamps']:.3f} | |"
        )
    if "median_seconds_per_step_from_timestamps" in pipe:
        med_bare = sum(b["median_seconds_per_step"] for b in bare) / len(bare)
        med_pipe = pipe["median_seconds_per_step_from_timestamps"]
        res["median_ratio"] = med_pipe / med_bare
        bare_meds = ", ".join(f"{b['median_seconds_per_step']:.3f}" for b in bare)
        lines.append(
            f"| median s/step: bare runs {bare_meds}; pipeline (timestamps) {med_pipe:.3f} | "
            f"ratio {med_pipe / med_bare:.3f}x | <= 1.05x |"
        )
    share = [b["reward_plus_scheduler_share"] for b in bare]
    lines.append(
        "| reward + scheduler per step (bare runs) | "
        + ", ".join(
            f"{1000 * b['reward_s_per_step']:.2f} + {1000 * b['observe_s_per_step']:.3f} ms" for b in bare
        )
        + " | |"
    )
    shares = ", ".join(f"{100 * s:.2f} %" for s in share)
    lines.append(f"| reward + scheduler share of step time | {shares} | <= 1 % |")
    cb = ", ".join(f"{100 * b['callback_share']:.2f} %" for b in bare)
    lines.append(f"| whole curriculum callback (pop, observe, metrics, history.jsonl) share | {cb} | |")
    if "mlflow_log" in res:
        ml = res["mlflow_log"]
        lines.append(
            f"| one step's metrics ({ml['metrics_per_call']}) -> mlflow.log_metrics, SQLite store | "
            f"{1000 * ml['mean_s']:.1f} ms mean, {1000 * ml['median_s']:.1f} ms median = "
            f"{100 * ml['median_s'] / mean_bare:.1f} % of a bare step | |"
        )
    lines.append(
        f"| pipeline process: exit code, wall, peak RSS | {pipe['returncode']}, {pipe['wall_s']:.0f} s, "
        f"{pipe['process_peak_rss_mb']:.0f} MiB | |"
    )
    if "training_peak_rss_mb" in pipe:
        lines.append(
            f"| pipeline training peak RSS (TrainingResult) | {pipe['training_peak_rss_mb']:.0f} MiB | |"
        )
    rss = ", ".join(f"{b['training_peak_rss_mb']:.0f} MiB" for b in bare)
    lines.append(f"| bare runs: training peak RSS | {rss} | |")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bare = res["bare"]
    labels = [f"bare {i + 1}" for i in range(len(bare))]
    values = [b["seconds_per_step"] for b in bare]
    if "seconds_per_step" in res["pipeline"]:
        labels.insert(1, "pipeline")
        values.insert(1, res["pipeline"]["seconds_per_step"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    ax1.bar(labels, values, color=["#4c72b0" if lab != "pipeline" else "#dd8452" for lab in labels])
    ax1.set_ylabel("seconds / GRPO step")
    parts = {
        "reward": sum(b["reward_s_per_step"] for b in bare) / len(bare),
        "scheduler": sum(b["observe_s_per_step"] for b in bare) / len(bare),
        "callback (all)": sum(b["callback_s_per_step"] for b in bare) / len(bare),
    }
    mean_sps = sum(values) / len(values)
    ax2.bar(list(parts), [100 * v / mean_sps for v in parts.values()], color="#55a868")
    ax2.axhline(1.0, color="grey", ls=":", lw=0.8)
    ax2.set_ylabel("% of step time (bare)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=None, help="override training.max_steps")
    parser.add_argument("--sft-steps", type=int, default=None, help="override training.sft_warmup_steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medloc_bench_overhead"))
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args(argv)

    common.limit_threads(args.threads)
    note_start = common.machine_note()
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cfg = bench_config(args.config, work, args.steps, args.sft_steps)
    import yaml

    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.environ.update(
        {k: v for k, v in state_env(work, args.threads).items() if k.startswith(("MEDLOC", "MLFLOW"))}
    )

    res: dict[str, Any] = {"config": str(args.config), "threads": args.threads, "iou": iou_throughput()}
    print(f"iou_pairs 1e6 pairs: best {res['iou']['best_s']:.3f} s, mean {res['iou']['mean_s']:.3f} s")
    res["bare"] = [run_bare(cfg, work, "bare")]
    print(f"bare 1: {res['bare'][0]['seconds_per_step']:.3f} s/step")
    if args.skip_pipeline:
        res["pipeline"] = {"returncode": None, "wall_s": float("nan"), "process_peak_rss_mb": float("nan")}
    else:
        res["pipeline"] = run_pipeline(config_path, work, args.threads)
        print(f"pipeline: {json.dumps(res['pipeline'])}")
    res["bare"].append(run_bare(cfg, work, "bare"))
    print(f"bare 2: {res['bare'][1]['seconds_per_step']:.3f} s/step")
    res["mlflow_log"] = mlflow_step_logging(work / "bare" / "history.jsonl", work)
    res["note"] = (
        f"Config {args.config.relative_to(common.REPO_ROOT) if args.config.is_relative_to(common.REPO_ROOT) else args.config}"
        f" (max_steps {cfg['parameters']['training'].get('max_steps')}, sft_warmup_steps "
        f"{cfg['parameters']['training'].get('sft_warmup_steps')}), {args.threads} torch thread(s). "
        f"Start: {note_start}; end: {common.machine_note()}."
    )
    md = report(res)
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (common.RESULTS_DIR / "overhead.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (common.RESULTS_DIR / "overhead.md").write_text(md)
    plot(res, common.RESULTS_DIR / "overhead.png")
    print(md)


if __name__ == "__main__":
    main()
