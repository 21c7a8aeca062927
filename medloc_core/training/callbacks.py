"""TrainerCallbacks, one per concern: the curriculum (τ observe/raise and the per-step metrics) and a table of
sample completions in MLflow; plus the metrics sink they emit to.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medloc_core.training.checkpoints import CURRICULUM_STATE_NAME

logger = logging.getLogger(__name__)


MetricsSink = Callable[[dict[str, float], int], None]


# Keys the curriculum contributes per step (docs/architecture.md); the schedule's stats key -> metric name.
_CURRICULUM_STATS = {
    "hit_rate": "curriculum/hit_rate",
    "reward_std": "curriculum/reward_std",
    "iou_margin": "curriculum/iou_margin",
    "cond_reward": "curriculum/cond_reward",
    "cond_stability": "curriculum/cond_stability",
    "cond_margin": "curriculum/cond_margin",
    "iou_quantile": "curriculum/iou_quantile",  # medloc_spread: where τ is heading
}


# TRL log key -> our metric name.
_TRL_KEYS = {
    "loss": "train/loss",
    "grad_norm": "train/grad_norm",
    "reward": "train/reward",
    "reward_std": "train/reward_std",
    "frac_reward_zero_std": "train/frac_reward_zero_std",
    "learning_rate": "train/learning_rate",
    "kl": "train/kl",
    "entropy": "train/entropy",
    "completions/mean_length": "train/completion_length",
    "completions/clipped_ratio": "train/clipped_ratio",
}


def default_metrics_sink(metrics: dict[str, float], step: int) -> None:
    """Log to the active MLflow run, if there is one (mlflow is only consulted when already imported).

    Asynchronous: a synchronous write to a SQLite store costs ~15 ms, ~5 % of a tiny-model CPU step
    (``bench/overhead.py``); MLflow flushes the queue when the run ends.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.log_metrics(metrics, step=step, synchronous=False)


def _gather(values: list) -> list:
    """All ranks' lists concatenated in rank order (identity on one process)."""
    try:
        from accelerate import PartialState

        state = PartialState()
        if state.num_processes <= 1:
            return values
        from accelerate.utils import gather_object

        return list(gather_object(values))
    except (ImportError, RuntimeError):  # accelerate state not initialised: single process
        return values


def dead_group_split(
    ious: list[float],
    datasets: list[Any],
    group_size: int,
    schedule: Any,
    thresholds: dict[str, float],
    tau: float | None,
) -> dict[str, float]:
    """Why GRPO groups are dead. A group (``group_size`` consecutive completions of one prompt) is dead when its
    accuracy rewards (``rewards.grounding.accuracy_values`` at the τ that scored the step) have zero spread; it
    is *all-hit* (``train/dead_all_hit``: too easy at this τ) when every IoU clears τ, *all-miss*
    (``train/dead_all_miss``: too hard) otherwise. Without a τ (raw IoU) a dead group of zero IoUs is all-miss
    and one of equal positive IoUs all-hit. For the binary reward dead means all hits or all misses; for graded
    rewards (``medloc_spread``, V-Triune's) only equal rewards are dead."""
    from medloc_core.rewards.grounding import accuracy_values

    hit, miss = 0, 0
    groups = range(0, len(ious), group_size)
    for start in groups:
        group = ious[start : start + group_size]
        bar = thresholds.get(str(datasets[start]), tau) if schedule.per_dataset else tau
        values = accuracy_values(schedule, group, [bar] * len(group))
        if max(values) - min(values) > 0.0:
            continue
        cleared = all(v > 0.0 for v in group) if bar is None else all(v >= bar for v in group)
        hit += cleared
        miss += not cleared
    n = len(groups)
    return {"train/dead_all_hit": hit / n, "train/dead_all_miss": miss / n}


def _transformers_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class CurriculumCallback(_transformers_callback_base()):  # type: ignore[misc]
    """Feeds each optimizer step's IoUs (all ranks) to the schedule and emits the per-step metrics.

    The τ that scored a step's batch is logged as ``curriculum/threshold`` for that step; ``observe`` may then
    raise τ, which the reward function reads when the next batch is scored (A2).
    """

    def __init__(
        self,
        schedule: Any,
        tracker: Any,
        *,
        num_generations: int,
        metrics_sink: MetricsSink | None,
        history_path: Path | None,
        reward_names: Sequence[str],
    ) -> None:
        self.schedule, self.tracker = schedule, tracker
        self.num_generations = num_generations
        self.metrics_sink = metrics_sink
        self.history_path = history_path
        self.reward_names = list(reward_names)
        self.history: list[dict[str, Any]] = []
        self._pending: dict[int, dict[str, float]] = {}
        self._step_times: list[float] = []
        self._t_last: float | None = None

    # -- timing
    def on_train_begin(self, args, state, control, **kwargs):
        self._t_last = time.perf_counter()

    @property
    def step_seconds(self) -> list[float]:
        return list(self._step_times)

    # -- curriculum
    def _curriculum_metrics(self, record: Any) -> dict[str, float]:
        sched = self.schedule
        per_dataset = sched.per_dataset
        metrics: dict[str, float] = {}
        tau_before = self._threshold()
        if tau_before is not None:
            metrics["curriculum/threshold"] = tau_before
        per_ds_before = dict(sched.thresholds) if per_dataset else {}
        ious = _gather(list(record.ious))
        datasets = _gather(list(record.datasets))
        failures = sum(_gather([record.parse_failures]))
        completions = sum(_gather([record.completions]))
        raised = False
        if ious and len(ious) % self.num_generations == 0:
            metrics.update(
                dead_group_split(ious, datasets, self.num_generations, sched, per_ds_before, tau_before)
            )
        if ious:
            if per_dataset:
                raised = bool(sched.observe(ious, datasets=[str(d) for d in datasets]))
            else:
                g = self.num_generations
                groups = [ious[i : i + g] for i in range(0, len(ious), g)] if len(ious) % g == 0 else ious
                raised = bool(sched.observe(groups))
            metrics["train/iou_mean"] = float(sum(ious) / len(ious))
            metrics["train/parse_failure_rate"] = failures / completions if completions else 0.0
        stats = sched.stats
        if per_dataset:
            names = list(sched.schedules)
            for name in names:
                sub = sched.schedules[name].stats
                if per_ds_before.get(name) is not None:
                    metrics[f"curriculum/{name}/threshold"] = float(per_ds_before[name])
                for key, metric in _CURRICULUM_STATS.items():
                    if key in sub:
                        metrics[metric.replace("curriculum/", f"curriculum/{name}/")] = float(sub[key])
            nums = [int(sched.schedules[n].stats.get("num_raises", 0)) for n in names]
            metrics["curriculum/num_raises"] = float(sum(nums))
            # Aggregates over datasets keep the single-schedule keys: means of the window statistics, and a
            # condition counts as met only when it is met for every dataset.
            subs = [sched.schedules[n].stats for n in names]
            for key, metric in _CURRICULUM_STATS.items():
                values = [float(sub[key]) for sub in subs if key in sub]
                if values:
                    agg = min(values) if key.startswith("cond_") else sum(values) / len(values)
                    metrics[metric] = float(agg)
        else:
            for key, metric in _CURRICULUM_STATS.items():
                if key in stats:
                    metrics[metric] = float(stats[key])
            metrics["curriculum/num_raises"] = float(stats.get("num_raises", 0))
            config = getattr(sched, "config", None)
            if tau_before is not None and hasattr(config, "min_hit_rate"):
                # The readiness bars this step's check compared against: P(τ) (min window hit rate) and S(τ)
                # (max window std) at the τ that scored the step.
                metrics["curriculum/required_hit_rate"] = float(config.min_hit_rate(tau_before))
                metrics["curriculum/max_reward_std"] = float(config.max_std(tau_before))
        metrics["curriculum/raised"] = float(raised)
        return metrics

    def _threshold(self) -> float | None:
        threshold = self.schedule.threshold  # the mean over datasets for a per-dataset schedule
        return None if threshold is None else float(threshold)

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._t_last is not None:
            self._step_times.append(now - self._t_last)
        self._t_last = now
        self.last_record = self.tracker.pop_step()
        metrics = self._curriculum_metrics(self.last_record)
        # medloc_spread moves τ by small steps most steps: its τ is in the progress lines, not a line per raise
        each = getattr(self.schedule, "logs_each_raise", True)
        if metrics["curriculum/raised"] and state.is_world_process_zero and each:
            self._log_raise(state.global_step, metrics)
        self._pending[state.global_step] = metrics
        if not control.should_log:  # logging_steps > 1: no TRL log this step; emit the curriculum part now
            self._emit(state, state.global_step, self._pending.pop(state.global_step))

    def _log_raise(self, step: int, metrics: dict[str, float]) -> None:
        """One line per raise: old → new τ and the window statistics that decided it (at the old τ)."""
        bars = ""
        if "curriculum/required_hit_rate" in metrics:
            bars = " (bars: hit rate ≥ {:.2f}, std ≤ {:.3f})".format(
                metrics["curriculum/required_hit_rate"], metrics["curriculum/max_reward_std"]
            )
        old = metrics.get("curriculum/threshold")
        logger.info(
            "τ raised %s → %.2f after step %d: window hit rate %.2f, std %.3f, IoU margin %+.3f%s",
            "—" if old is None else f"{old:.2f}",
            self._threshold() or 0.0,
            step,
            metrics.get("curriculum/hit_rate", float("nan")),
            metrics.get("curriculum/reward_std", float("nan")),
            metrics.get("curriculum/iou_margin", float("nan")),
            bars,
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs or state.global_step not in self._pending:
            return
        metrics = self._pending.pop(state.global_step)
        for key, name in _TRL_KEYS.items():
            if key in logs and isinstance(logs[key], int | float):
                metrics[name] = float(logs[key])
        for key, value in logs.items():
            if (key.startswith("rewards/") and key.endswith("/mean")) or key.startswith("dynamic_sampling/"):
                metrics[f"train/{key}"] = float(value)
        self._emit(state, state.global_step, metrics)

    def _emit(self, state, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.history.append(row)
        if not state.is_world_process_zero:
            return
        if self.history_path is not None:
            with self.history_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        if self.metrics_sink is not None:
            self.metrics_sink(metrics, step)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write_state(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)

    def write_state(self, ckpt: Path, global_step: int) -> None:
        """Write ``curriculum_state.json`` (the last file of a checkpoint) atomically."""
        ckpt.mkdir(parents=True, exist_ok=True)
        payload = {"global_step": global_step, "schedule": self.schedule.state_dict()}
        tmp = ckpt / (CURRICULUM_STATE_NAME + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        tmp.replace(ckpt / CURRICULUM_STATE_NAME)


class CompletionsTableCallback(_transformers_callback_base()):  # type: ignore[misc]
    """Every ``every`` optimizer steps, a sample of the step's completions (text, IoU, dataset) goes to the
    active MLflow run as a table (``completions/step_<N>.json``), next to the curriculum trace. Reads the
    record the :class:`CurriculumCallback` popped for the step, so it must come after it."""

    def __init__(self, curriculum: Any, every: int, sample: int = 16) -> None:
        self.curriculum, self.every, self.sample = curriculum, every, sample

    def on_step_end(self, args, state, control, **kwargs):
        record = getattr(self.curriculum, "last_record", None)
        if (
            not self.every
            or state.global_step % self.every
            or record is None
            or not state.is_world_process_zero
        ):
            return
        import mlflow

        if mlflow.active_run() is None or not record.texts:
            return
        n = min(self.sample, len(record.texts))
        mlflow.log_table(
            {
                "step": [state.global_step] * n,
                "completion": record.texts[:n],
                "iou": record.ious[:n],
                "dataset": [str(d) for d in record.datasets[:n]],
                "threshold": [self.curriculum._threshold()] * n,
            },
            artifact_file=f"completions/step_{state.global_step:05d}.json",
        )


class ProgressLogCallback(_transformers_callback_base()):  # type: ignore[misc]
    """The console's view of GRPO, replacing TRL's per-step dicts (they stay in MLflow): one line every
    ``every`` optimizer steps (τ, reward, mean IoU, dead groups, seconds per step, time left) and one at the end.
    Reads the rows the :class:`CurriculumCallback` emitted, so it must come after it."""

    def __init__(self, curriculum: CurriculumCallback, every: int) -> None:
        self.curriculum, self.every = curriculum, max(1, every)
        self._t0: float | None = None
        self._first_step = self._last_line = 0
        self._tau_start: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0, self._first_step = time.perf_counter(), state.global_step
        self._last_line = state.global_step
        self._tau_start = self.curriculum._threshold()

    def on_log(self, args, state, control, logs=None, **kwargs):
        step = state.global_step
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        if step % self.every and step != state.max_steps:
            return
        # means over the steps since the last line: one step's values are too noisy to read
        rows = [r for r in self.curriculum.history if self._last_line < r["step"] <= step]
        self._last_line = step

        def mean(key: str) -> float:
            values = [float(r[key]) for r in rows if r.get(key) is not None]
            return sum(values) / len(values) if values else float("nan")

        done = step - self._first_step
        per_step = (time.perf_counter() - self._t0) / done if self._t0 is not None and done > 0 else 0.0
        tau = self.curriculum._threshold()
        logger.info(
            "GRPO step %d/%d: τ %s; over the last %d steps: reward %.2f, mean IoU %.3f, dead groups %.2f; "
            "%.2f s/step, ~%.0f s left",
            step,
            state.max_steps,
            "—" if tau is None else f"{tau:.2f}",
            len(rows),
            mean("train/reward"),
            mean("train/iou_mean"),
            mean("train/frac_reward_zero_std"),
            per_step,
            per_step * (state.max_steps - step),
        )

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self._t0 is None:
            return
        done = state.global_step - self._first_step
        seconds = time.perf_counter() - self._t0
        raises = [r["step"] for r in self.curriculum.history if r.get("curriculum/raised")]
        tau = self.curriculum._threshold()
        when = f"after steps {', '.join(map(str, raises))}" if raises else "never"
        if len(raises) > 6:
            when = f"{len(raises)} times (after steps {raises[0]}–{raises[-1]})"
        logger.info(
            "GRPO: %d steps in %.0f s (%.2f s/step); τ %s → %s, raised %s",
            done,
            seconds,
            seconds / done if done else 0.0,
            "—" if self._tau_start is None else f"{self._tau_start:.2f}",
            "—" if tau is None else f"{tau:.2f}",
            when,
        )
