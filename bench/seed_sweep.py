"""Does the embedded recipe's gain hold on every seed? The recipe of the bare ``zenml pipeline run medloc_training``
on N seeds, one process per seed, with what the pipeline reports for each.

Every block is read from ``configs/medloc_training_local.yaml`` (``--config`` for another) and run through the
same library calls as the pipeline's steps: the data sources (the bundled synthetic set, generated once), the
preprocessing, ``training.train`` (SFT warm-up with its early stop, then GRPO with the curriculum) and the
evaluation of the trained model and of its SFT start on the test split with the paired-bootstrap gain. Only
``training.seed`` changes between runs; it seeds the stand-in's initial weights, the SFT and GRPO data order
and the sampling. Per seed it prints the SFT handover (step, val check), A@0.5 at the SFT start and after GRPO
with 95 % intervals, the paired gain with its interval, when τ was raised, the dead-group rate and the s/step;
then the mean and the worst seed. Results: ``bench/results/seed_sweep.md`` and ``.json``.

    .venv/bin/python bench/seed_sweep.py --seeds 0 1 2 3 4 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import common

GAIN = "eval/gain/A@0.5"


#: Smaller runs for smoke tests: (option, block, key); None leaves the config's value.
SHRINK = (
    ("n", "data", "n"),
    ("steps", "training", "max_steps"),
    ("sft_steps", "training", "sft_warmup_steps"),
)
_OVERRIDES: dict[str, Any] = {}


def _blocks(config_path: Path) -> dict[str, Any]:
    import yaml

    blocks = yaml.safe_load(config_path.read_text(encoding="utf-8"))["parameters"]
    for (_, block, key), value in zip(SHRINK, (_OVERRIDES.get(o) for o, _, _ in SHRINK)):
        if value is None:
            continue
        if block == "data":
            for source in blocks["data"]["sources"]:
                source["synth"][key] = value
        else:
            blocks[block][key] = value
    return blocks


def prepare_data(config_path: Path, work: Path) -> Path:
    """Ingest and preprocess the config's data as the pipeline does; the prepared table is written once."""
    from medloc_core.data.preprocess import preprocess
    from medloc_core.data.sources import ingest_sources
    from medloc_core.run_config import DataConfig, PreprocessingConfig

    out = work / "prepared.parquet"
    if out.is_file():
        return out
    blocks = _blocks(config_path)
    data = DataConfig(**blocks["data"])
    sources = [s.model_dump(exclude_none=True) for s in data.sources]
    for source in sources:  # the bench's own copy of the data, not the project's .medloc
        source["root"] = str(work / "data" / Path(source["root"]).name)
    records, _, report = ingest_sources(sources, max_quarantine_fraction=data.max_quarantine_fraction)
    pre = PreprocessingConfig(**blocks["preprocessing"])
    prepared, _ = preprocess(records, **pre.model_dump())
    prepared.to_parquet(out)
    counts = prepared["split"].value_counts().to_dict()
    print(f"data: {report['records']} records, splits {counts}", flush=True)
    return out


def run_seed(seed: int, config_path: str, work: str, threads: int, overrides: dict) -> dict[str, Any]:
    """The embedded recipe for ``training.seed = seed``; returns the row of the table."""
    common.limit_threads(threads)
    _OVERRIDES.update(overrides)
    import pandas as pd

    from medloc_core.evaluation.metrics import paired_gain
    from medloc_core.evaluation.runner import EvaluationConfig, evaluate_model
    from medloc_core.run_config import PreprocessingConfig
    from medloc_core.training.config import TrainingConfig
    from medloc_core.training.session import train

    blocks = _blocks(Path(config_path))
    folder = Path(work) / f"seed{seed}"
    prepared = pd.read_parquet(Path(work) / "prepared.parquet")
    pre = PreprocessingConfig(**blocks["preprocessing"])
    frame = {"min_pixels": pre.min_pixels, "max_pixels": pre.max_pixels, "answer_style": pre.answer_style}
    cfg = TrainingConfig(
        **{
            **blocks["training"],
            **frame,
            "seed": seed,
            "tiny_model_dir": str(Path(work) / "models"),
            "progress": False,
            # --threads 2 sums in another order: a stand-in for another CPU's float rounding
            "torch_threads": threads,
        }
    )
    t0 = time.perf_counter()
    result = train(prepared, cfg, folder, resume=False, metrics_sink=lambda m, s: None)
    train_s = time.perf_counter() - t0
    ev = EvaluationConfig(**blocks["evaluation"])
    options = {
        "split": ev.split,
        "max_new_tokens": ev.max_new_tokens,
        "batch_size": ev.batch_size,
        "n_boot": ev.n_boot,
    }
    final, final_pred = evaluate_model(str(result.model_dir), prepared, **options)
    base, base_pred = evaluate_model(str(folder / "sft"), prepared, **options)
    gain = paired_gain(final_pred, base_pred, n_boot=ev.n_boot)
    history = result.history
    dead = [float(h["train/frac_reward_zero_std"]) for h in history if "train/frac_reward_zero_std" in h]
    raises = [int(h["step"]) for h in history if h.get("curriculum/raised")]
    sft = result.sft or {}
    row = {
        "seed": seed,
        "sft_steps": sft.get("steps"),
        "sft_checks": sft.get("val_checks"),
        "n_test": len(final_pred),
        "start": base["eval/A@0.5"],
        "start_ci": (base["eval/A@0.5_ci_low"], base["eval/A@0.5_ci_high"]),
        "final": final["eval/A@0.5"],
        "final_ci": (final["eval/A@0.5_ci_low"], final["eval/A@0.5_ci_high"]),
        "gain": gain[GAIN],
        "gain_ci": (gain[f"{GAIN}_ci_low"], gain[f"{GAIN}_ci_high"]),
        "gain_mIoU": gain["eval/gain/mIoU"],
        "final_A@0.8": final["eval/A@0.8"],
        "start_A@0.8": base["eval/A@0.8"],
        "raises": raises,
        "final_tau": result.final_threshold,
        "dead": sum(dead) / len(dead) if dead else float("nan"),
        "dead_first_60": sum(dead[:60]) / len(dead[:60]) if dead else float("nan"),
        "s_per_step": result.seconds_per_step,
        "train_s": train_s,
        "curve": [(int(h["step"]), h.get("train/iou_mean"), h.get("curriculum/threshold")) for h in history],
    }
    print(_line(row), flush=True)
    return row


def _line(r: dict[str, Any]) -> str:
    return (
        f"seed {r['seed']}: SFT {r['sft_steps']} steps | A@0.5 {r['start']:.1f} [{r['start_ci'][0]:.1f}, "
        f"{r['start_ci'][1]:.1f}] -> {r['final']:.1f} [{r['final_ci'][0]:.1f}, {r['final_ci'][1]:.1f}] | gain "
        f"{r['gain']:+.1f} [{r['gain_ci'][0]:+.1f}, {r['gain_ci'][1]:+.1f}] | tau raised at {r['raises']} "
        f"(final {r['final_tau']}) | dead {r['dead']:.2f} (first 60: {r['dead_first_60']:.2f}) | "
        f"{r['s_per_step']:.2f} s/step, {r['train_s']:.0f} s"
    )


def table(rows: list[dict[str, Any]], note: str) -> str:
    rows = sorted(rows, key=lambda r: r["seed"])
    out = [
        note,
        "",
        "| seed | SFT steps | test images | A@0.5 SFT start | A@0.5 after GRPO | gain (paired 95 % CI) | A@0.8 start → end "
        "| τ raised after step | dead groups (all / first 60) | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['seed']} | {r['sft_steps']} | {r['n_test']} | {r['start']:.1f} [{r['start_ci'][0]:.1f}, "
            f"{r['start_ci'][1]:.1f}] | {r['final']:.1f} [{r['final_ci'][0]:.1f}, {r['final_ci'][1]:.1f}] | "
            f"**{r['gain']:+.1f}** [{r['gain_ci'][0]:+.1f}, {r['gain_ci'][1]:+.1f}] | {r['start_A@0.8']:.1f} → "
            f"{r['final_A@0.8']:.1f} | {', '.join(map(str, r['raises'])) or 'never'} | {r['dead']:.2f} / "
            f"{r['dead_first_60']:.2f} | {r['s_per_step']:.2f} |"
        )
    gains = [r["gain"] for r in rows]
    worst = min(rows, key=lambda r: r["gain"])
    lows = [r["gain_ci"][0] for r in rows]
    mean, std = common.mean_std(gains)
    out += [
        "",
        f"Mean gain {mean:+.1f} ± {std:.1f} points A@0.5 over {len(rows)} seeds; worst seed {worst['seed']}: "
        f"{worst['gain']:+.1f} [{worst['gain_ci'][0]:+.1f}, {worst['gain_ci'][1]:+.1f}]; lowest lower bound "
        f"{min(lows):+.1f}. Every seed ≥ +10 with lower bound > 0: "
        f"{'yes' if all(g >= 10 for g in gains) and min(lows) > 0 else 'no'}.",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2, help="processes at once (1 torch thread each)")
    parser.add_argument("--config", default=str(common.REPO_ROOT / "configs" / "medloc_training_local.yaml"))
    parser.add_argument("--work", default="/tmp/medloc_seed_sweep")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (training included)"
    )
    parser.add_argument("--n", type=int, help="synthetic images (default: the config's)")
    parser.add_argument("--steps", type=int, help="GRPO steps (default: the config's)")
    parser.add_argument("--sft-steps", type=int, help="SFT warm-up steps at most (default: the config's)")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "seed_sweep"), help="path without suffix")
    args = parser.parse_args()
    common.limit_threads(args.threads)
    _OVERRIDES.update({o: getattr(args, o) for o, _, _ in SHRINK})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start_note = common.machine_note()
    t0 = time.perf_counter()
    prepare_data(Path(args.config), work)
    jobs = [(s, args.config, str(work), args.threads, dict(_OVERRIDES)) for s in args.seeds]
    with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
        rows = pool.starmap(run_seed, jobs)
    note = (
        f"Seed sweep of {Path(args.config).name}: seeds {args.seeds}, {args.jobs} processes, "
        f"{(time.perf_counter() - t0) / 60:.1f} min. Start: {start_note}; end: {common.machine_note()}."
    )
    text = table(rows, note)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
