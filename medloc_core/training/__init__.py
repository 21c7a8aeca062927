"""GRPO training of a Qwen2.5-VL grounder with TRL and the MedLoc-R1 IoU curriculum.

Wiring (``train``):

1. The ``split == "train"`` rows of a prepared DataFrame become a TRL dataset: ``prompt`` (chat messages from
   ``prompts.chat_messages``), ``image`` (PIL, resized to the row's model-input frame), ``bbox``
   (``[in_x1, in_y1, in_x2, in_y2]``, model-input-frame pixels, xyxy), ``dataset``, ``record_id``.
2. Optional SFT warm-up (``medloc_core.sft``) writes ``output_dir/sft``; GRPO then starts from it (and, with
   ``beta > 0``, uses it as the reference policy, as VLM-R1 does when RL starts from an SFT checkpoint).
3. ``GRPOTrainer`` gets the format reward and the accuracy reward of the chosen schedule
   (``medloc_core.rewards``). The reward reads τ from the schedule when a batch is scored; a
   :class:`CurriculumCallback` pops the :class:`~medloc_core.rewards.RewardTracker` after every optimizer step,
   gathers the IoUs of all ranks (methods.md A13), feeds them to ``schedule.observe`` and so a raise applies
   from the next batch on (A2). It emits one metrics dict per step to ``metrics_sink`` and
   ``output_dir/history.jsonl``.
4. Checkpoints (``save_steps``) hold the trainer state plus ``curriculum_state.json``; ``resume=True`` continues
   from the last one with τ, the window, the raise count, the step and the weights restored. Full fine-tuning
   works around transformers#43701 (Trainer's resume skips Qwen2.5-VL's key conversion and silently keeps the
   old weights) by loading the checkpoint through ``from_pretrained``; MLAE checkpoints store only MLAE tensors.
5. ``output_dir/final`` holds a plain (adapter-merged) model and the processor, loadable with
   ``modeling.load_model`` + ``modeling.load_processor``; LoRA/MLAE adapters are also kept in
   ``final/adapter``.

KL β defaults to 0.04 (VLM-R1's value); the MedLoc-R1 digest says 0.4 (ambiguity A7 in methods.md §1(i)).

Modules: ``config``, ``rows``, ``callbacks``, ``trainer``, ``warmup`` (SFT), ``medgrpo``, ``session``; the
``accelerate launch`` entry is ``medloc_core.cli.train`` (``medloc train``).
"""

import importlib
from typing import Any

# Names resolve on first use, so that `medloc_core.training.config` (what the typed run config needs) can be
# imported without transformers, peft and TRL.
_HOMES = {
    "CURRICULUM_STATE_NAME": "medloc_core.checkpoints",
    "CompletionsTableCallback": "medloc_core.training.callbacks",
    "CurriculumCallback": "medloc_core.training.callbacks",
    "MetricsSink": "medloc_core.training.callbacks",
    "default_metrics_sink": "medloc_core.training.callbacks",
    "ADAPTERS": "medloc_core.training.config",
    "HISTORY_NAME": "medloc_core.training.config",
    "MEDGRPO_STATS_NAME": "medloc_core.training.config",
    "SCHEDULES": "medloc_core.training.config",
    "SFT_DONE_NAME": "medloc_core.training.config",
    "TINY_ALIASES": "medloc_core.training.config",
    "TrainingConfig": "medloc_core.training.config",
    "resolve_model_path": "medloc_core.training.config",
    "trl_field_names": "medloc_core.training.config",
    "weights_dtype": "medloc_core.training.config",
    "fit_medgrpo": "medloc_core.training.medgrpo",
    "REQUIRED_COLUMNS": "medloc_core.training.rows",
    "build_examples": "medloc_core.training.rows",
    "check_frames": "medloc_core.training.rows",
    "train_rows": "medloc_core.training.rows",
    "TrainingResult": "medloc_core.training.session",
    "TrainingSession": "medloc_core.training.session",
    "latest_complete_checkpoint": "medloc_core.training.session",
    "peak_rss_mb": "medloc_core.training.session",
    "prepare_training": "medloc_core.training.session",
    "read_history": "medloc_core.training.session",
    "save_final_model": "medloc_core.training.session",
    "train": "medloc_core.training.session",
    "build_grpo_config": "medloc_core.training.trainer",
    "load_full_weights": "medloc_core.training.trainer",
    "SMALL_MODEL_PARAMS": "medloc_core.training.warmup",
    "configure_threads": "medloc_core.training.warmup",
    "generate_completions": "medloc_core.training.warmup",
    "greedy_hit_rate": "medloc_core.training.warmup",
    "run_sft_warmup": "medloc_core.training.warmup",
    "sft_stop_iou": "medloc_core.training.warmup",
    "sft_val_examples": "medloc_core.training.warmup",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "CURRICULUM_STATE_NAME",
    "ADAPTERS",
    "CompletionsTableCallback",
    "CurriculumCallback",
    "HISTORY_NAME",
    "MEDGRPO_STATS_NAME",
    "MetricsSink",
    "REQUIRED_COLUMNS",
    "SCHEDULES",
    "SFT_DONE_NAME",
    "SMALL_MODEL_PARAMS",
    "TINY_ALIASES",
    "TrainingConfig",
    "TrainingResult",
    "TrainingSession",
    "build_examples",
    "build_grpo_config",
    "check_frames",
    "configure_threads",
    "default_metrics_sink",
    "fit_medgrpo",
    "generate_completions",
    "greedy_hit_rate",
    "latest_complete_checkpoint",
    "load_full_weights",
    "peak_rss_mb",
    "prepare_training",
    "read_history",
    "resolve_model_path",
    "run_sft_warmup",
    "save_final_model",
    "sft_stop_iou",
    "sft_val_examples",
    "train",
    "train_rows",
    "trl_field_names",
    "weights_dtype",
]
