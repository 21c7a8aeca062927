"""Where does a GRPO step of the embedded recipe spend its time? One profiled training run, grouped by part.

Builds the bench's synthetic set and the ``grounder`` stand-in, warms it with ``--sft-steps`` SFT steps (so
completions have the length of a warm policy), then runs ``--steps`` GRPO steps of the embedded recipe's TRL loop
(4 prompts x 16 completions, its sampling settings) with 1 torch thread, and prints the wall time per step (mean
of the steps after the first) and, per step, the wall time of each part: generation, image + text processing, the
training forward (per-token log-probs), backward, optimizer step, rewards; the rest is TRL's bookkeeping, data
loading and logging. ``--cprofile`` runs the same under ``cProfile`` instead (slower, function-level table).
Results land in ``bench/results/step_profile.md``.

    .venv/bin/python bench/step_profile.py                 # 30 GRPO steps after 400 SFT steps
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path
from typing import Any

import common

# Part of the step -> functions (file fragment, function name) whose *cumulative* time is that part's.
PARTS: dict[str, list[tuple[str, str]]] = {
    "generation (model.generate)": [("transformers/generation/utils.py", "generate")],
    "image processing (processor __call__)": [("image_processing", "preprocess")],
    "log-prob passes (forward outside generate)": [
        ("trl/trainer/grpo_trainer.py", "_get_per_token_logps_and_entropies")
    ],
    "backward": [("torch/_tensor.py", "backward")],
    "optimizer step": [("torch/optim/optimizer.py", "wrapper")],
    "rewards": [("trl/trainer/grpo_trainer.py", "_calculate_rewards")],
    "callbacks (curriculum, completions table, MLflow)": [("transformers/trainer_callback.py", "call_event")],
}


def _timed(owner: Any, name: str, label: str, timers: dict[str, float]) -> None:
    """Wrap ``owner.name`` so that its wall time adds up in ``timers[label]``."""
    inner = getattr(owner, name)

    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            timers[label] = timers.get(label, 0.0) + time.perf_counter() - t0

    setattr(owner, name, wrapper)


def _install_timers(session: Any, timers: dict[str, float]) -> None:
    """Wall-clock timers (no profiler) around the parts of a step: generation, image processing, the training
    forward (the trainer's per-token log-probs), backward, the optimizer step and the reward functions."""
    import torch

    trainer = session.trainer
    _timed(trainer.model, "generate", "generation (model.generate)", timers)
    _timed(type(session.processor), "__call__", "image + text processing (processor)", timers)
    _timed(trainer, "_get_per_token_logps_and_entropies", "training forward (log-probs)", timers)
    _timed(torch.autograd, "backward", "backward", timers)
    _timed(trainer, "_calculate_rewards", "rewards", timers)
    _timed(torch.optim.AdamW, "step", "optimizer step", timers)


def run(args: argparse.Namespace) -> dict[str, Any]:
    common.limit_threads(1)
    from medloc_core.training.session import prepare_training

    work = Path(args.work)
    prepared = common.synthetic_prepared(work / "data", n=args.n, seed=0, size=224, contrast=1.0, blur=0.0)
    base, _ = common.stand_in(work, args.seed)
    cfg = common.recipe_training_config(
        model_name_or_path=str(base),
        seed=args.seed,
        max_steps=args.steps,
        sft_warmup_steps=args.sft_steps,
        sft_stop_hit_rate=None,
        save_steps=0,
        progress=False,
    )
    session = prepare_training(prepared, cfg, work / f"profile-seed{args.seed}", resume=False)
    profiler = cProfile.Profile()
    timers: dict[str, float] = {}
    if not args.cprofile:
        _install_timers(session, timers)
    start = time.perf_counter()
    if args.cprofile:
        profiler.enable()
    result = session.run()
    profiler.disable()
    wall = time.perf_counter() - start
    if not args.cprofile:
        return {"steps": result.steps, "s_per_step": result.seconds_per_step, "wall": wall, "parts": timers}
    stats = pstats.Stats(profiler)
    parts: dict[str, float] = {}
    for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for part, keys in PARTS.items():
            if any(frag in file and name == fn for frag, fn in keys):
                parts[part] = max(parts.get(part, 0.0), ct)
    return {
        "steps": result.steps,
        "s_per_step": result.seconds_per_step,
        "wall": wall,
        "parts": parts,
        "stats": stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps to profile")
    parser.add_argument(
        "--sft-steps", type=int, default=400, help="SFT warm-up steps before them (no early stop)"
    )
    parser.add_argument("--n", type=int, default=600, help="synthetic images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/medloc_step_profile")
    parser.add_argument("--cprofile", action="store_true", help="run under cProfile (function-level table)")
    parser.add_argument("--top", type=int, default=25, help="functions by own time to print")
    parser.add_argument("--out", default=str(common.RESULTS_DIR / "step_profile.md"))
    args = parser.parse_args()
    note = common.machine_note()
    out = run(args)
    mode = "under cProfile (adds overhead to Python-heavy parts)" if args.cprofile else "wall-clock timers"
    lines = [
        f"GRPO step profile: {out['steps']} steps after {args.sft_steps} SFT steps, 1 torch thread, {mode}; {note}.",
        "",
        f"**{out['s_per_step']:.3f} s per GRPO step** (mean of the steps after the first).",
        "",
        "| part | s per step | share |",
        "|---|---|---|",
    ]
    steps = max(out["steps"], 1)
    total = out["wall"] / steps
    for part, seconds in sorted(out["parts"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {part} | {seconds / steps:.3f} | {100 * seconds / steps / total:.0f} % |")
    if not args.cprofile:
        rest = total - sum(out["parts"].values()) / steps
        lines.append(
            f"| the rest (TRL bookkeeping, data loading, logging) | {rest:.3f} | {100 * rest / total:.0f} % |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if "stats" in out:
        out["stats"].sort_stats("tottime").print_stats(args.top)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
