"""A training run end to end: ``prepare_training`` builds the session (SFT warm-up, rewards, schedule,
trainer, resume point), ``TrainingSession.run`` trains and saves ``final/``; ``train`` does both.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medloc_core.curriculum import schedule_for
from medloc_core.model import loading
from medloc_core.model.adapters import attach_adapter_for_training
from medloc_core.rewards import grounding
from medloc_core.rewards.tracker import RewardTracker
from medloc_core.training import checkpoints
from medloc_core.training.callbacks import (
    CompletionsTableCallback,
    CurriculumCallback,
    MetricsSink,
    default_metrics_sink,
)
from medloc_core.training.config import (
    HISTORY_NAME,
    MEDGRPO_STATS_NAME,
    TrainingConfig,
    resolve_model_path,
    weights_dtype,
)
from medloc_core.training.rows import build_examples, check_frames, train_rows
from medloc_core.training.trainer import build_grpo_config, medloc_grpo_trainer
from medloc_core.training.warmup import configure_threads, fit_medgrpo, run_sft_warmup, sft_val_examples

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """Outcome of :func:`train`. ``history`` has one dict per optimizer step (the metrics of that step plus
    ``step``); ``seconds_per_step`` is the mean wall time of GRPO steps after the first; ``peak_rss_mb`` the
    process's peak resident memory (MiB, ``getrusage``)."""

    model_dir: Path
    history: list[dict[str, Any]]
    final_threshold: float | None
    num_raises: int
    steps: int
    seconds_per_step: float
    peak_rss_mb: float
    sft: dict[str, Any] | None = None
    medgrpo_stats: dict[str, list[float]] | None = None
    resumed_from: str | None = None


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


@dataclass
class TrainingSession:
    """A built but not yet run training: the trainer, the schedule and tracker, and where it resumes from."""

    trainer: Any
    config: TrainingConfig
    output_dir: Path
    model_path: str
    schedule: Any
    tracker: Any
    callback: CurriculumCallback
    processor: Any
    resume_checkpoint: str | None
    sft: dict[str, Any] | None
    medgrpo_stats: dict[str, list[float]] | None

    def run(self) -> TrainingResult:
        """Train (resuming when a checkpoint was found), save ``output_dir/final``, return the result."""
        self.trainer.train(resume_from_checkpoint=self.resume_checkpoint)
        accelerator = self.trainer.accelerator
        main = accelerator.is_main_process
        final = self.output_dir / "final"
        if main:  # one writer: under `accelerate launch` every rank reaches this point
            save_final_model(self)
        accelerator.wait_for_everyone()
        history = read_history(self.output_dir / HISTORY_NAME)
        times = self.callback.step_seconds
        sps = (
            float(sum(times[1:]) / len(times[1:]))
            if len(times) > 1
            else (times[0] if times else float("nan"))
        )
        raises = self.schedule.num_raises
        result = TrainingResult(
            model_dir=final,
            history=history,
            final_threshold=self.callback._threshold(),
            num_raises=raises,
            steps=int(self.trainer.state.global_step),
            seconds_per_step=sps,
            peak_rss_mb=peak_rss_mb(),
            sft=self.sft,
            medgrpo_stats=self.medgrpo_stats,
            resumed_from=self.resume_checkpoint,
        )
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "history"}
        summary["model_dir"] = str(final)
        summary["config"] = self.config.model_dump(mode="json")
        summary["num_processes"] = accelerator.num_processes
        if main:
            (final / "medloc_training.json").write_text(
                json.dumps(summary, indent=2, default=str) + "\n", "utf-8"
            )
        return result


def read_history(path: Path) -> list[dict[str, Any]]:
    """The per-step rows of ``history.jsonl`` (empty when missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _truncate_history(path: Path, last_step: int) -> None:
    """Drop rows after ``last_step`` (steps redone after a resume would otherwise appear twice)."""
    rows = [r for r in read_history(path) if int(r["step"]) <= last_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def save_final_model(session: TrainingSession) -> Path:
    """Write ``output_dir/final``: the adapter-merged model + processor; adapters also under ``final/adapter``.

    Adapters are merged into a fresh copy of the base model loaded from disk, so the trained (unmerged) model
    held by the trainer is left untouched.
    """
    cfg, trainer = session.config, session.trainer
    final = session.output_dir / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.adapter == "full":
        model.save_pretrained(str(final))
    else:
        if cfg.adapter == "lora":
            model.save_pretrained(str(final / "adapter"))
        else:
            from medloc_core.model import mlae  # lazy: imports torch

            mlae.save_mlae(model, final / "adapter", base_model=session.model_path)
        # Merged into an fp32 copy: the training step's output keeps fp32 weights (registration may cast).
        merged = loading.load_model(session.model_path, dtype="float32", adapter_dir=final / "adapter")
        merged.save_pretrained(str(final))
        del merged
    session.processor.save_pretrained(str(final))
    return final


def latest_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint that can really be resumed from (``checkpoints.latest_loadable_checkpoint``):
    damaged or cut-off newer ones are set aside with a warning."""
    return checkpoints.latest_loadable_checkpoint(output_dir)


def _resume_point(out: Path, resume: bool, state: Any) -> str | None:
    """The checkpoint to resume from, or None; a fresh start clears a previous run's leftovers (main rank)."""
    checkpoint = latest_complete_checkpoint(out) if resume else None
    if checkpoint is None and state.is_main_process:
        for child in [*out.glob("checkpoint-*"), out / HISTORY_NAME, out / MEDGRPO_STATS_NAME]:
            shutil.rmtree(child) if child.is_dir() else child.unlink(missing_ok=True)
    state.wait_for_everyone()
    return checkpoint


def _medgrpo_stats(
    config: TrainingConfig, model: Any, processor: Any, examples: list, schedule: Any, out: Path, state: Any
) -> dict[str, list[float]] | None:
    """MedGRPO's per-dataset quartiles: fitted once by the main rank (or the run being resumed), then read."""
    if not config.medgrpo_normalization:
        return None
    path = out / MEDGRPO_STATS_NAME
    with state.main_process_first():
        if not path.is_file():
            fit_reward = grounding.make_reward_for_schedule(schedule, None, parser=config.reward_parser)
            stats = fit_medgrpo(model, processor, examples, fit_reward, config)
            path.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        return json.loads(path.read_text(encoding="utf-8"))


def _processor(config: TrainingConfig, base_path: str) -> Any:
    processor = loading.load_processor(base_path)
    if config.min_pixels is not None:
        loading.set_pixel_bounds(processor, config.min_pixels, config.max_pixels)
    return processor


def _starting_policy(
    config: TrainingConfig,
    base_path: str,
    processor: Any,
    examples: list,
    prepared_df: Any,
    out: Path,
    state: Any,
) -> tuple[str, dict[str, Any] | None, Any]:
    """The SFT warm-up (when configured; the main rank runs it, the others reuse its folder), then the policy GRPO
    trains, in training mode, with the process's thread count set."""
    import torch

    model_path, sft_summary = base_path, None
    if config.sft_warmup_steps > 0:
        val_examples = sft_val_examples(prepared_df, config, processor)
        with state.main_process_first():
            model_path, sft_summary = run_sft_warmup(
                config, base_path, processor, examples, out, val_examples
            )
    torch.manual_seed(config.seed)
    model = loading.load_model(model_path, dtype=weights_dtype(config))
    model.train()
    configure_threads(config, model)
    return model_path, sft_summary, model


def _schedule(config: TrainingConfig, examples: list) -> Any:
    return schedule_for(
        config.schedule,
        curriculum=config.curriculum_settings,
        spread=config.spread_settings,
        fixed_tau=config.fixed_tau,
        total_steps=config.max_steps,
        per_dataset=[e["dataset"] for e in examples] if config.per_dataset_thresholds else None,
    )


def _rewards(
    config: TrainingConfig, schedule: Any, tracker: RewardTracker, medgrpo_stats: dict | None
) -> tuple[list, list[float]]:
    return grounding.build_rewards(
        schedule,
        tracker,
        parser=config.reward_parser,
        mix=config.resolved_reward_mix,
        accuracy_weight=config.accuracy_weight,
        format_weight=config.format_weight,
        format_reward=config.format_reward,
        require_think=config.require_think,
        format_partial_credit=config.format_partial_credit,
        medgrpo_stats=medgrpo_stats,
        medgrpo_k=config.medgrpo_k,
    )


def _adapter(config: TrainingConfig, model: Any) -> Any:
    return attach_adapter_for_training(
        model,
        config.adapter,
        target_modules=config.target_modules_arg,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        mlae_drop_rate=config.mlae_drop_rate,
        gradient_checkpointing=config.gradient_checkpointing,
    )


def _restore_curriculum(checkpoint: str | None, schedule: Any, history_path: Path, state: Any) -> None:
    """On resume: τ, the window and the raise count from the checkpoint; history rows after it dropped."""
    if checkpoint is None:
        return
    step = checkpoints.restore_curriculum(checkpoint, schedule)
    if state.is_main_process:
        _truncate_history(history_path, step)
    logger.info("resuming from %s (step %s, threshold %s)", checkpoint, step, schedule.stats)


def _dataset(examples: list) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [{k: e[k] for k in ("prompt", "image", "bbox", "dataset", "record_id")} for e in examples]
    )


def prepare_training(
    prepared_df: Any,
    config: TrainingConfig,
    output_dir: str | os.PathLike,
    *,
    metrics_sink: MetricsSink | None = None,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainingSession:
    """Build everything :func:`train` runs (SFT warm-up included), without starting GRPO: one named builder per
    line, each a thin call into the module of its concern. Under ``accelerate launch`` every rank runs this;
    file-writing work happens on the main rank first and the others reuse it."""
    from accelerate import PartialState

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = train_rows(prepared_df)
    base_path = resolve_model_path(config)
    processor = _processor(config, base_path)
    check_frames(rows, processor)
    examples = build_examples(rows, config.answer_style)
    state = PartialState(
        cpu=config.use_cpu
    )  # cpu=True: the gloo process group under torchrun, as use_cpu does
    checkpoint = _resume_point(out, resume, state)
    model_path, sft_summary, model = _starting_policy(
        config, base_path, processor, examples, prepared_df, out, state
    )
    schedule, tracker = _schedule(config, examples), RewardTracker()
    medgrpo_stats = _medgrpo_stats(config, model, processor, examples, schedule, out, state)
    reward_funcs, weights = _rewards(config, schedule, tracker, medgrpo_stats)
    peft_config = _adapter(config, model)
    _restore_curriculum(checkpoint, schedule, out / HISTORY_NAME, state)
    callback = CurriculumCallback(
        schedule,
        tracker,
        num_generations=config.num_generations,
        metrics_sink=default_metrics_sink if metrics_sink is None else metrics_sink,
        history_path=out / HISTORY_NAME,
        reward_names=[f.__name__ for f in reward_funcs],
    )
    trainer = medloc_grpo_trainer(
        adapter=config.adapter,
        base_model=model_path,
        curriculum_callback=callback,
        progress=config.progress,
        dynamic_sampling_draws=config.dynamic_sampling_draws if config.dynamic_sampling else 1,
        model=model,
        reward_funcs=reward_funcs,
        args=build_grpo_config(config, out, weights),
        train_dataset=_dataset(examples),
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[callback, CompletionsTableCallback(callback, config.log_completions_every), *callbacks],
    )
    return TrainingSession(
        trainer=trainer,
        config=config,
        output_dir=out,
        model_path=model_path,
        schedule=schedule,
        tracker=tracker,
        callback=callback,
        processor=processor,
        resume_checkpoint=checkpoint,
        sft=sft_summary,
        medgrpo_stats=medgrpo_stats,
    )


def train(
    prepared_df: Any,
    config: TrainingConfig,
    output_dir: str | os.PathLike,
    *,
    metrics_sink: MetricsSink | None = None,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainingResult:
    """Run GRPO (after the optional SFT warm-up) on the train split of ``prepared_df``; see the module doc.

    ``metrics_sink(metrics, step)`` receives each optimizer step's metrics (default: the active MLflow run, if
    any). ``resume`` continues from the last ``output_dir/checkpoint-*``; ``resume=False`` starts over.
    ``callbacks`` are extra ``TrainerCallback`` objects.
    """
    session = prepare_training(
        prepared_df, config, output_dir, metrics_sink=metrics_sink, resume=resume, callbacks=callbacks
    )
    return session.run()
