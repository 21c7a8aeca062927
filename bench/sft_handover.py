"""Where should the SFT warm-up hand over to GRPO? The embedded recipe's warm-up run to its last step, scored.

Runs the local recipe's SFT (``sft.sft_warmup``: lr, batch, schedule and steps from
``configs/medloc_training_local.yaml``, no early stop) on the bench's synthetic set, and every ``--every`` steps
prints the greedy hit rate on the val split at IoU 0.2 (τ0, the recipe's early-stop check) and 0.5, and test A@0.5.
One line per check and seed; a table in ``bench/results/sft_handover.md``. The early stop fires at the first check
where val@τ0 reaches ``sft_stop_hit_rate``; this shows how far the policy is then from the end of its jump.

    .venv/bin/python bench/sft_handover.py --seeds 0 1 2 --jobs 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path
from typing import Any

import common
from curriculum import local_recipe


def trace(
    seed: int, work: Path, every: int, steps: int | None, n: int, target_scale: float = 1.0
) -> list[dict[str, Any]]:
    """The recipe's SFT warm-up (``steps``: None = the recipe's) for stand-in init seed ``seed`` on ``n`` images,
    scored every ``every`` steps and at the end."""
    common.limit_threads(1)
    import torch

    from medloc_core.model import loading
    from medloc_core.training import sft
    from medloc_core.training.rows import build_examples, train_rows
    from medloc_core.training.warmup import greedy_hit_rate

    recipe = local_recipe()
    steps = recipe["sft_warmup_steps"] if steps is None else steps
    prepared = common.synthetic_prepared(
        work / "data", n=n, seed=0, size=224, contrast=1.0, blur=0.0, target_scale=target_scale
    )
    base, processor = common.stand_in(work, seed)
    splits = {s: build_examples(train_rows(prepared, s), "answer") for s in ("train", "val", "test")}
    torch.manual_seed(seed)
    model = loading.load_model(str(base), dtype="float32")
    rows: list[dict[str, Any]] = []

    def check(step: int) -> None:
        def hit(split: str, iou: float) -> float:
            return greedy_hit_rate(
                model, processor, splits[split], iou=iou, max_new_tokens=recipe["max_completion_length"]
            )

        row = {"seed": seed, "step": step, "val@0.2": hit("val", 0.2), "val@0.5": hit("val", 0.5)}
        row["test A@0.5"] = hit("test", 0.5)
        rows.append(row)
        print(
            "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
            flush=True,
        )

    examples = [sft.SFTExample(e["prompt"], e["image"], e["target"]) for e in splits["train"]]
    sft.sft_warmup(
        model,
        processor,
        examples,
        steps=steps,
        learning_rate=recipe["sft_learning_rate"],
        batch_size=recipe.get("sft_batch_size", 8),
        seed=seed,
        progress=False,
        lr_schedule=recipe["sft_lr_scheduler_type"],
        stop_when=check,  # returns None: it scores, it never stops the warm-up
        check_every=every,
    )
    check(steps)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--every", type=int, default=50, help="steps between checks")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("--steps", type=int, default=None, help="SFT steps (default: the recipe's)")
    parser.add_argument("--n", type=int, default=600, help="synthetic images (~20 %% test, ~10 %% val)")
    parser.add_argument("--target-scale", type=float, default=1.0, help="lesion size multiplier")
    parser.add_argument("--work", type=Path, default=Path("/tmp/medloc_sft_handover"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    common.synthetic_prepared(  # once
        args.work / "data", n=args.n, seed=0, size=224, contrast=1.0, blur=0.0, target_scale=args.target_scale
    )
    jobs = [(seed, args.work, args.every, args.steps, args.n, args.target_scale) for seed in args.seeds]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            traces = pool.starmap(trace, jobs)
    else:
        traces = [trace(*job) for job in jobs]
    keys = ["seed", "step", "val@0.2", "val@0.5", "test A@0.5"]
    lines = [
        f"SFT handover trace: seeds {args.seeds}, the local recipe's warm-up without early stop, "
        f"{time.perf_counter() - t0:.0f} s.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for row in (r for t in traces for r in t):
        lines.append(
            "| " + " | ".join(str(row[k]) if k in ("seed", "step") else f"{row[k]:.3f}" for k in keys) + " |"
        )
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (common.RESULTS_DIR / "sft_handover.md").write_text("\n".join(lines) + "\n")
    print(lines[0])


if __name__ == "__main__":
    main()
