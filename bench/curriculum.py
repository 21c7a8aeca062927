"""Does a curriculum beat fixed thresholds? Every reward schedule, same policy, seeds and steps, in a named regime.

    .venv/bin/python bench/curriculum.py --regime warm   --seeds 0 1 2 3 4 --jobs 2   # bench/README.md §2
    .venv/bin/python bench/curriculum.py --regime sparse --seeds 0 1 2 3 4 --jobs 2
    .venv/bin/python bench/curriculum.py --seeds 0 --steps 20 --sft-steps 60 --n 120    # smoke run

Regimes (:data:`REGIMES`): ``warm`` is the embedded recipe (its data, SFT hand-over at val A@0.5 >= 0.4 and GRPO
settings); ``sparse`` is MedLoc-R1's regime: lesions at half the area (linear scale 0.7) and an SFT (up to 1200
steps, cosine) stopped at the first check where the val hit rate at IoU 0.5 reaches 0.05, so GRPO starts weak
(test A@0.5 around 5-15 %). Both have 1600 images (~320 test).

For every seed: build the tiny offline Qwen2.5-VL (init seed = seed), run ONE SFT warm-up on the train split,
then run GRPO (the real TRL loop of ``medloc_core.training``) from that same checkpoint under each schedule:
``medloc`` (curriculum, tau0 0.2 -> 0.8, window 10 as in the local config), ``fixed`` (tau = 0.5), ``raw_iou``,
``vtriune`` and ``medloc_spread`` (docs/curriculum.md; same tau0 and window). Each run is evaluated (greedy) on the
held-out test split; the SFT checkpoint is evaluated too. ``--dynamic-sampling`` runs every schedule with
dynamic sampling on (names get ``+ds``). The report pairs ``medloc_spread`` with every other schedule per seed,
on the same test images.

Dead groups. A group is the ``num_generations`` completions of one prompt. It is *dead* when its rewards have
zero spread, so every GRPO advantage in it is 0. Two rates are reported:
* ``dead_acc``: computed here from the per-completion IoUs the reward saw and the threshold that scored that
  step, for the accuracy reward alone (``1[IoU >= tau]``, ``IoU`` or ``IoU * 1[IoU >= eps]``): the quantity the
  MedLoc-R1 claim is about;
* ``dead_all``: TRL's ``frac_reward_zero_std`` of the summed reward (accuracy + format): a group whose IoU rewards
  are all 0 can still have a format-reward spread.
"early" = the first 30 % of steps (rounded up).

Outputs in ``bench/results/``, named by regime: ``curriculum_<regime>.md`` (tables), ``.csv`` (one row per run),
``_traces.json`` (per-step tau, dead rates, all-hit / all-miss split), ``.png``. Each (schedule, seed) is an MLflow
run in experiment ``medloc-bench`` (tracking URI: ``$MLFLOW_TRACKING_URI`` or the project's embedded store
``$MEDLOC_HOME/mlflow/mlflow.db``, default ``.medloc/``, git-ignored).

``--simulate`` adds a clearly separate *policy-free* run (see :func:`simulate`): no model, simulated IoU draws
through the same reward functions, tracker and schedules; it is a sanity model of the mechanism, not evidence.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path to the repo root; must precede torch)
from curriculum_report import dead_split, early_steps, write_outputs  # noqa: E402
from curriculum_sim import simulate  # noqa: E402

from medloc_core.curriculum import SCHEDULE_NAMES as SCHEDULES

#: Named regimes: the synthetic data (``common.synthetic_prepared`` arguments), overrides of the recipe's SFT
#: hand-over, and the GRPO steps.
REGIMES: dict[str, dict[str, Any]] = {
    "warm": {"data": {"n": 1600, "target_scale": 1.0}, "sft": {}, "sft_steps": None, "steps": 300},
    # Half the lesion area (linear scale 0.7, ~20 px boxes in the 112-px frame). At linear scale 0.5 (~14 px,
    # one 14-px patch) the stand-in's SFT learns nothing in 1500 steps (bench/README.md §2).
    "sparse": {
        "data": {"n": 1600, "target_scale": 0.7},
        "sft": {"sft_stop_iou": 0.5, "sft_stop_hit_rate": 0.05},
        "sft_steps": 1200,
        "steps": 300,
    },
}

# ------------------------------------------------------------------------------------------------ runs


def local_recipe() -> dict[str, Any]:
    """The ``training`` block of the embedded default (configs/medloc_training_local.yaml): the bench's defaults."""
    import yaml

    config = yaml.safe_load((common.REPO_ROOT / "configs" / "medloc_training_local.yaml").read_text())
    return config["parameters"]["training"]


def run_sft(
    prepared: Any, seed: int, steps: int, work: Path, overrides: dict[str, Any] | None = None
) -> Path:
    """Build the stand-in (init seed ``seed``) and run the local recipe's SFT warm-up on the train split (the
    pipeline's own ``run_sft_warmup``, early stop on the val split included; ``overrides`` on top of the recipe's
    ``sft_*`` settings); return its folder."""
    from medloc_core.training.config import TrainingConfig
    from medloc_core.training.rows import build_examples, check_frames, train_rows
    from medloc_core.training.warmup import run_sft_warmup, sft_val_examples

    recipe = local_recipe()
    keys = [k for k in recipe if k.startswith("sft_") and k != "sft_warmup_steps"]
    keys += ["schedule", "curriculum", "spread", "max_completion_length"]
    cfg = TrainingConfig(
        **{**{k: recipe[k] for k in keys if k in recipe}, **(overrides or {})},
        sft_warmup_steps=steps,
        answer_style="answer",
        use_cpu=True,
        seed=seed,
        progress=False,
    )
    base, processor = common.stand_in(work, seed)
    rows = train_rows(prepared)
    check_frames(rows, processor)
    examples = build_examples(rows, "answer")
    out = work / f"seed{seed}"
    folder, summary = run_sft_warmup(
        cfg, str(base), processor, examples, out, sft_val_examples(prepared, cfg, processor)
    )
    print(
        f"  SFT seed {seed}: {summary['steps']} steps in {summary['seconds']:.0f} s (early stop: "
        f"{summary.get('stopped_early')}), loss {summary['first_loss']:.2f} -> {summary['last_loss']:.2f}",
        flush=True,
    )
    return Path(folder)


def evaluate(model_dir: Path, prepared: Any, max_new_tokens: int) -> dict[str, Any]:
    from medloc_core.evaluation.runner import evaluate_model

    metrics, predictions = evaluate_model(
        model_dir, prepared, split="test", max_new_tokens=max_new_tokens, batch_size=8, n_boot=0
    )
    # per-image IoUs, for the paired comparisons of the report
    return {**metrics, "ious": dict(zip(predictions["record_id"], predictions["iou"].astype(float)))}


def grpo_run(
    prepared: Any, schedule: str, seed: int, sft_dir: Path, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """One GRPO run from the shared SFT checkpoint; returns its summary, per-step traces and history."""
    from medloc_core.training.config import TrainingConfig
    from medloc_core.training.session import prepare_training

    recipe = local_recipe()
    curriculum = {**(recipe.get("curriculum") or {}), "window": args.window, "tau0": args.tau0}
    spread = {**(recipe.get("spread") or {}), "window": args.window, "tau0": args.tau0, **args.spread}
    name, ds = schedule.removesuffix("+ds"), schedule.endswith("+ds")
    cfg = TrainingConfig(
        model_name_or_path=str(sft_dir),
        min_pixels=common.MIN_PIXELS,
        max_pixels=common.MAX_PIXELS,
        schedule=name,
        curriculum=curriculum if name == "medloc" else None,
        spread=spread if name == "medloc_spread" else None,
        dynamic_sampling=ds,
        fixed_tau=0.5,
        num_generations=args.group_size,
        per_device_train_batch_size=args.group_size * args.prompts_per_step,
        max_steps=args.steps,
        learning_rate=args.lr,
        beta=0.0,
        temperature=args.temperature,
        top_p=args.top_p,
        max_completion_length=args.max_completion_length,
        answer_style="answer",
        use_cpu=True,
        save_steps=0,
        seed=seed,
        progress=False,
    )
    metrics_rows: list[tuple[dict[str, float], int]] = []
    t0 = time.perf_counter()
    session = prepare_training(
        prepared,
        cfg,
        work / f"seed{seed}" / schedule,
        metrics_sink=lambda m, s: metrics_rows.append((dict(m), s)),
        resume=False,
    )
    steps: list[dict[str, Any]] = []
    pop = session.tracker.pop_step

    def recording_pop():
        # The callback pops the tracker before it feeds the schedule, so `threshold` is the tau that scored
        # this step's batch.
        record = pop()
        steps.append({"ious": list(record.ious), "tau": session.schedule.threshold})
        return record

    session.tracker.pop_step = recording_pop
    result = session.run()
    wall = time.perf_counter() - t0
    split = [dead_split(session.schedule, s["ious"], s["tau"], args.group_size) for s in steps]
    dead_acc = [hit + miss for hit, miss in split]
    by_step = {int(h["step"]): h for h in result.history}
    dead_all = [
        float(by_step[i + 1].get("train/frac_reward_zero_std", float("nan"))) for i in range(len(steps))
    ]
    iou_mean = [sum(s["ious"]) / len(s["ious"]) for s in steps]
    # Hit rate at the threshold that scored the step (raw_iou has none: IoU >= 0.5, the A@0.5 bar).
    live = [
        float(by_step[i + 1].get("train/dynamic_sampling/live_groups", 1.0 - dead_all[i]))
        for i in range(len(steps))
    ]
    hit = [
        sum(v >= (0.5 if s["tau"] is None else s["tau"]) for v in s["ious"]) / len(s["ious"]) for s in steps
    ]
    k = early_steps(len(steps))
    metrics = evaluate(result.model_dir, prepared, args.max_completion_length)
    summary = {
        "schedule": schedule,
        "seed": seed,
        "steps": len(steps),
        "dead_acc_early": sum(dead_acc[:k]) / k,
        "dead_acc_all": sum(dead_acc) / len(dead_acc),
        "dead_hit_early": sum(h for h, _ in split[:k]) / k,
        "dead_miss_early": sum(m for _, m in split[:k]) / k,
        "trained_live_early": sum(live[:k]) / k,
        "dead_all_early": sum(dead_all[:k]) / k,
        "dead_all_all": sum(dead_all) / len(dead_all),
        "train_iou_early": sum(iou_mean[:k]) / k,
        "train_iou_late": sum(iou_mean[-k:]) / k,
        "A@0.5": metrics["eval/A@0.5"],
        "A@0.8": metrics["eval/A@0.8"],
        "mIoU": metrics["eval/mIoU"],
        "pseudo_mAP": metrics["eval/pseudo_mAP"],
        "parse_failure_rate": metrics["eval/parse_failure_rate"],
        "final_tau": result.final_threshold,
        "num_raises": result.num_raises,
        "wall_s": wall,
        "seconds_per_step": result.seconds_per_step,
    }
    traces = {
        "tau": [s["tau"] for s in steps],
        "dead_acc": dead_acc,
        "dead_hit": [h for h, _ in split],
        "dead_miss": [m for _, m in split],
        "dead_all": dead_all,
        "iou_mean": iou_mean,
        "hit": hit,
    }
    return {
        "summary": summary,
        "traces": traces,
        "metrics_rows": metrics_rows,
        "config": cfg.model_dump(mode="json"),
        "eval": metrics,
    }


# ---------------------------------------------------------------------------------------------- mlflow


def log_mlflow(run: dict[str, Any], experiment: str) -> str:
    """One MLflow run per (schedule, seed): params, per-step metrics (batched), summary and eval metrics."""
    import mlflow
    from mlflow.entities import Metric

    from medloc_core.evaluation.metrics import mlflow_metrics

    s = run["summary"]
    client = mlflow.MlflowClient()
    with mlflow.start_run(
        run_name=f"{s['schedule']}-seed{s['seed']}", tags={"bench": "curriculum"}
    ) as active:
        params = {
            k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in run["config"].items()
        }
        mlflow.log_params(params)
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step)
            for metrics, step in run["metrics_rows"]
            for key, value in metrics.items()
            if isinstance(value, int | float) and math.isfinite(value)
        ]
        for key in ("dead_acc", "dead_hit", "dead_miss"):
            for i, value in enumerate(run["traces"][key], start=1):
                batch.append(Metric(f"bench/{key}", value, now, i))
        for i in range(0, len(batch), 900):  # MLflow caps a batch at 1000 metrics
            client.log_batch(active.info.run_id, metrics=batch[i : i + 900])
        summary = {
            f"bench/{k}": float(v)
            for k, v in s.items()
            if k not in ("schedule", "seed") and isinstance(v, int | float) and v is not None
        }
        scores = {k: v for k, v in run["eval"].items() if k != "ious"}
        mlflow.log_metrics(mlflow_metrics({**summary, **scores}))
        return active.info.run_id


# ------------------------------------------------------------------------------------------------ main


def run_seed(seed: int, args: argparse.Namespace, prepared: Any, work: Path):
    """One seed: SFT once, then GRPO under every schedule from that checkpoint. Returns (runs, SFT eval)."""
    common.limit_threads(args.threads)
    t_start = time.perf_counter()
    sft_dir = run_sft(prepared, seed, args.sft_steps, work, REGIMES[args.regime]["sft"])
    sft_eval = evaluate(sft_dir, prepared, args.max_completion_length)
    print(
        f"  SFT seed {seed}: A@0.5 {sft_eval['eval/A@0.5']:.1f} mIoU {sft_eval['eval/mIoU']:.3f}", flush=True
    )
    runs = []
    for name in args.schedules:
        run = grpo_run(prepared, name + ("+ds" if args.dynamic_sampling else ""), seed, sft_dir, args, work)
        s = run["summary"]
        runs.append(run)
        print(
            f"  {name:8s} seed {seed}: dead(acc) early {s['dead_acc_early']:.2f} all {s['dead_acc_all']:.2f}; "
            f"A@0.5 {s['A@0.5']:.1f} A@0.8 {s['A@0.8']:.1f} mIoU {s['mIoU']:.3f}; tau -> {s['final_tau']}; "
            f"{s['wall_s']:.0f} s ({s['seconds_per_step']:.2f} s/step); elapsed {time.perf_counter() - t_start:.0f} s",
            flush=True,
        )
    return runs, sft_eval


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    recipe = local_recipe()  # defaults: the embedded default run's recipe
    parser.add_argument("--regime", choices=sorted(REGIMES), default="warm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    parser.add_argument(
        "--dynamic-sampling", action="store_true", help="every schedule with dynamic sampling"
    )
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run (default: the regime's)")
    parser.add_argument("--sft-steps", type=int, default=None, help="SFT steps (default: the regime's)")
    parser.add_argument(
        "--prompts-per-step",
        type=int,
        default=recipe["per_device_train_batch_size"] // recipe["num_generations"],
    )
    parser.add_argument("--group-size", type=int, default=recipe["num_generations"], help="num_generations")
    parser.add_argument("--window", type=int, default=10, help="curriculum window (medloc and medloc_spread)")
    parser.add_argument("--tau0", type=float, default=0.2, help="tau0 (medloc and medloc_spread)")
    parser.add_argument(
        "--spread",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="medloc_spread settings on top of the recipe's (e.g. iou_weight=2 target_hit_rate=0.3)",
    )
    parser.add_argument("--lr", type=float, default=recipe["learning_rate"])
    parser.add_argument("--temperature", type=float, default=recipe["temperature"])
    parser.add_argument("--top-p", type=float, default=recipe.get("top_p", 1.0))
    parser.add_argument("--max-completion-length", type=int, default=recipe["max_completion_length"])
    parser.add_argument(
        "--n", type=int, default=None, help="synthetic images (~20 %% test; default: the regime's)"
    )
    parser.add_argument("--target-scale", type=float, default=None, help="default: the regime's")
    parser.add_argument("--contrast", type=float, default=1.0)
    parser.add_argument("--blur", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("--work", default="/tmp/medloc_bench_curriculum")
    parser.add_argument("--experiment", default="medloc-bench")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--simulate", action="store_true", help="also run the policy-free simulation (extra)")
    parser.add_argument("--sim-only", action="store_true", help="only the policy-free simulation")
    parser.add_argument("--sim-sigma0", type=float, default=0.5)
    parser.add_argument("--sim-lr", type=float, default=0.05)
    args = parser.parse_args(argv)
    import yaml

    regime = REGIMES[args.regime]
    args.spread = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.spread)}
    args.steps = regime["steps"] if args.steps is None else args.steps
    if args.sft_steps is None:
        args.sft_steps = regime["sft_steps"] or recipe["sft_warmup_steps"]
    args.n = regime["data"]["n"] if args.n is None else args.n
    args.target_scale = regime["data"]["target_scale"] if args.target_scale is None else args.target_scale

    common.limit_threads(args.threads)
    t_start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prepared = common.synthetic_prepared(
        work / "data",
        n=args.n,
        target_scale=args.target_scale,
        contrast=args.contrast,
        blur=args.blur,
    )
    counts = prepared["split"].value_counts().to_dict()
    print(f"data: {counts}; {common.machine_note()}")
    if args.simulate or args.sim_only:
        sim = simulate(args, prepared)
        print(sim)
        common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (common.RESULTS_DIR / "curriculum_simulation.md").write_text(sim)
        if args.sim_only:
            return

    if not args.no_mlflow:
        from medloc_core import tracking

        tracking.configure_mlflow(args.experiment)
    note_start = common.machine_note()
    runs: list[dict[str, Any]] = []
    sft_evals: dict[int, dict[str, float]] = {}
    jobs = [(seed, args, prepared, work) for seed in args.seeds]
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            results = pool.starmap(run_seed, jobs)
    else:
        results = [run_seed(*job) for job in jobs]
    for seed, (seed_runs, sft_eval) in zip(args.seeds, results):
        runs += seed_runs
        sft_evals[seed] = sft_eval
    if not args.no_mlflow:
        for run in runs:
            run["mlflow_run_id"] = log_mlflow(run, args.experiment)
    total = time.perf_counter() - t_start
    note = f"Whole script {total / 60:.1f} min, {args.threads} torch thread(s); start: {note_start}; end: {common.machine_note()}."
    md = write_outputs(runs, sft_evals, args, note)
    print(md)


if __name__ == "__main__":
    main()
