"""The TRL side: ``GRPOConfig`` built from ``TrainingConfig`` (no hand-copied field list) and the GRPOTrainer
subclass whose checkpoints really restore Qwen2.5-VL weights and MLAE adapters.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from medloc_core.model.cpu_kernels import compact_log_probs
from medloc_core.training import checkpoints
from medloc_core.training.callbacks import ProgressLogCallback
from medloc_core.training.config import TrainingConfig, trl_field_names
from medloc_core.training.shared_prefix import shared_prefix_generate, shared_prefix_log_probs

logger = logging.getLogger(__name__)

#: How many GRPO progress lines a run logs (one every max_steps // PROGRESS_LINES steps).
PROGRESS_LINES = 10


def medloc_grpo_trainer(
    *,
    adapter: str = "full",
    base_model: str | None = None,
    curriculum_callback: Any = None,
    progress: bool = True,
    dynamic_sampling_draws: int = 1,
    **kwargs: Any,
) -> Any:
    """A :class:`MedLocGRPOTrainer` (TRL's ``GRPOTrainer`` arguments in ``kwargs``) with its MedLoc collaborators:
    the ``adapter`` kind, the ``base_model`` an MLAE adapter is saved against, and the ``curriculum_callback``
    whose state completes every checkpoint. ``dynamic_sampling_draws`` > 1 turns on dynamic sampling with at
    most that many scored draws per generation batch (``training/dynamic_sampling.py``). ``progress``: about
    :data:`PROGRESS_LINES` progress lines in the log instead of transformers' progress bar and per-step dicts
    (off: neither). The class is built on first use:
    importing TRL costs seconds."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = _trainer_class()(
        adapter=adapter,
        base_model=base_model,
        curriculum_callback=curriculum_callback,
        dynamic_sampling_draws=dynamic_sampling_draws,
        **kwargs,
    )
    # TRL's per-step dicts (~850 characters each) go to MLflow; the console gets ProgressLogCallback's lines.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress and curriculum_callback is not None:
        every = max(1, trainer.args.max_steps // PROGRESS_LINES) if trainer.args.max_steps > 0 else 10
        trainer.add_callback(ProgressLogCallback(curriculum_callback, every))
    return trainer


@functools.cache
def _trainer_class() -> type:
    from trl import GRPOTrainer

    # TRL reads the deprecated alias `is_gradient_checkpointing` whenever it generates (trl/models/utils.py),
    # a FutureWarning per call that no setting of ours can avoid.
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )

    class MedLocGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with checkpoint handling that really restores Qwen2.5-VL weights and MLAE adapters."""

        def __init__(
            self,
            *args: Any,
            adapter: str,
            base_model: str | None,
            curriculum_callback: Any,
            dynamic_sampling_draws: int = 1,
            **kwargs: Any,
        ) -> None:
            self.medloc_adapter = adapter
            self.medloc_base_model = base_model
            self.medloc_callback = curriculum_callback
            self.medloc_draws = dynamic_sampling_draws
            super().__init__(*args, **kwargs)

            # TRL's fused LM head scores every position off Triton devices; score only the completions there.
            target = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            if compact_log_probs(target, self.temperature):
                logger.info("per-token log-probs: compact LM head on the completion positions (CPU)")
            _share_prompts_in_generate(target)

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            # Dynamic sampling: extra draws until every rank's batch can be filled with groups whose rewards
            # spread (or the draws run out); the curriculum window sees the first draw only (docs/curriculum.md).
            first = super()._generate_and_score_completions(inputs)
            if self.medloc_draws <= 1 or not self.model.training:
                return first
            return self._dynamic_batch(inputs, first)

        def _dynamic_batch(self, inputs: list[dict[str, Any]], first: dict[str, Any]) -> dict[str, Any]:
            import contextlib

            import torch
            from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

            from medloc_core.training import dynamic_sampling as ds

            g = self.num_generations
            draws, live = [first], [ds.live_groups(first["advantages"], g)]
            groups = live[0].numel()
            tracker = getattr(self.medloc_callback, "tracker", None)
            while len(draws) < self.medloc_draws:
                short = torch.tensor(
                    [max(0, groups - sum(int(f.sum()) for f in live))], device=first["advantages"].device
                )
                if int(self.accelerator.gather(short).sum()) == 0:  # every rank decides the same way
                    break
                picks = ds.extra_prompt_indices(
                    len(self.train_dataset),
                    groups,
                    seed=self.args.seed,
                    step=self.state.global_step,
                    draw=len(draws),
                    rank=self.accelerator.process_index,
                )
                extra = [self.train_dataset[i] for i in picks for _ in range(g)]
                with tracker.paused() if tracker is not None else contextlib.nullcontext():
                    scored = super()._generate_and_score_completions(extra)
                draws.append(scored)
                live.append(ds.live_groups(scored["advantages"], g))
            if len(draws) == 1 and bool(live[0].all()):
                stats = {"live_groups": 1.0, "masked_groups": 0.0}
                batch = first
            else:
                batch, stats = ds.fill_batch(
                    [split_pixel_values_by_grid(d) for d in draws],
                    live,
                    g,
                    groups,
                    self._tokenizer.pad_token_id,
                )
                batch = unsplit_pixel_values_by_grid(batch)
                batch["num_items_in_batch"] = self.accelerator.gather(batch["completion_mask"].sum()).sum()
            for key, value in {**stats, "draws": float(len(draws))}.items():
                self._metrics["train"][f"dynamic_sampling/{key}"].append(value)
            return batch

        def _get_per_token_logps_and_entropies(
            self, model: Any, input_ids: Any, attention_mask: Any, *args, **kw
        ):
            # Each distinct prompt (text + image) once, its cache shared by its completions: same log-probs and
            # gradients as TRL's full forward (training/shared_prefix.py); TRL's path for anything else.

            shared = None
            logits_to_keep = args[0] if args else kw.get("logits_to_keep")
            other_inputs = (
                "pixel_attention_mask",
                "spatial_shapes",
                "num_tiles",
                "image_sizes",
                "token_type_ids",
            )
            plain = not kw.get("compute_aux_loss") and all(kw.get(k) is None for k in other_inputs)
            if (
                plain
                and not args[1:]
                and isinstance(logits_to_keep, int)
                and kw.get("image_position_ids") is None
            ):
                shared = shared_prefix_log_probs(
                    model,
                    input_ids,
                    attention_mask,
                    logits_to_keep,
                    temperature=self.temperature,
                    pixel_values=kw.get("pixel_values"),
                    image_grid_thw=kw.get("image_grid_thw"),
                    num_images=kw.get("num_images"),
                    mm_token_type_ids=kw.get("mm_token_type_ids"),
                    compute_entropy=bool(kw.get("compute_entropy")),
                )
            if shared is None:
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, *args, **kw
                )
            return shared[0], shared[1], None

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            # Trainer rotates old checkpoints inside _save_checkpoint, before the callbacks' on_save writes the
            # curriculum state, so with save_total_limit a crash right then left only an incomplete checkpoint.
            # Save without rotating, complete the checkpoint, then rotate only if it is loadable.

            keep = self.args.save_total_limit
            self.args.save_total_limit = None
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = keep
            if not self.args.should_save:
                return
            run_dir = Path(self._get_output_dir(trial=trial))
            if self.medloc_callback is not None:
                self.medloc_callback.write_state(
                    run_dir / f"checkpoint-{self.state.global_step}", self.state.global_step
                )
            checkpoints.rotate(run_dir, keep)

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            if self.medloc_adapter != "mlae":
                return super()._save(output_dir, state_dict)
            from medloc_core.model import mlae  # lazy: imports torch

            out = Path(output_dir or self.args.output_dir)
            mlae.save_mlae(self.accelerator.unwrap_model(self.model), out, base_model=self.medloc_base_model)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(str(out))

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            model = self.model if model is None else model
            if self.medloc_adapter == "lora":  # peft adapters reload correctly through Trainer
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            if self.medloc_adapter == "mlae":
                from medloc_core.model import mlae  # lazy: imports torch

                mlae.load_mlae(self.accelerator.unwrap_model(model), resume_from_checkpoint)
                return None
            load_full_weights(self.accelerator.unwrap_model(model), resume_from_checkpoint)
            return None

    return MedLocGRPOTrainer


def _share_prompts_in_generate(model: Any) -> None:
    """Route the policy's ``generate`` through ``shared_prefix_generate`` (each distinct prompt prefilled once;
    ``generate`` itself for any call that path does not handle)."""

    generate = model.generate

    def shared_generate(*args: Any, **kwargs: Any) -> Any:
        out = None if args else shared_prefix_generate(model, **kwargs)
        return generate(*args, **kwargs) if out is None else out

    model.generate = shared_generate


def load_full_weights(model: Any, checkpoint_dir: str | os.PathLike) -> None:
    """Copy a saved full model's weights into ``model`` (strict), converting legacy Qwen2.5-VL key names.

    Trainer's own resume loads the checkpoint with a plain ``load_state_dict`` that does not convert the saved
    (legacy) keys and only warns, keeping the pre-resume weights (transformers#43701); ``from_pretrained``
    converts them.
    """
    import torch

    dtype = next(model.parameters()).dtype
    fresh = type(model).from_pretrained(str(checkpoint_dir), dtype=dtype)
    state = fresh.state_dict()
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(
            f"{checkpoint_dir}: checkpoint weights do not match the model (missing {missing[:5]}, "
            f"unexpected {list(unexpected)[:5]})"
        )
    del fresh


def _mlflow_run_active() -> bool:
    """An MLflow run this process started or entered (the pipeline step's, or under ``accelerate launch`` the
    one rank 0 resumed). Not while ``MLFLOW_RUN_ID`` is still set: transformers' MLflow callback would try to
    start that already active run again and fail."""
    import mlflow

    return mlflow.active_run() is not None and not os.environ.get("MLFLOW_RUN_ID")


def build_grpo_config(config: TrainingConfig, output_dir: Path, reward_weights: list[float]):
    """The TRL ``GRPOConfig`` for ``config``, with no hand-copied field list: every ``TrainingConfig`` field
    whose name is also a ``GRPOConfig`` field passes through by name, then the ``trl`` block (any other
    ``GRPOConfig`` option, as TRL names it) is applied on top, so a new TRL option takes one line of YAML.
    Metrics go through the metrics sink; with an active MLflow run, TRL also reports to it."""
    from trl import GRPOConfig

    if config.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "TrainingConfig.use_vllm=True but vLLM is not installed here; install vllm or set it false"
        )
    names = trl_field_names()
    shared = {name: getattr(config, name) for name in type(config).model_fields if name in names}
    shared.update(
        # save_steps 0 means "no checkpoints" here; TRL wants a strategy and a positive interval
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=config.save_steps if config.save_steps > 0 else 500,
        data_seed=config.seed,
        dataloader_num_workers=0,
    )
    # transformers 5 renamed gradient_checkpointing (a deprecated alias that warns) to activation_checkpointing.
    if "activation_checkpointing" in names:
        shared["activation_checkpointing"] = shared.pop("gradient_checkpointing")
    return GRPOConfig(
        **shared,
        **dict(config.trl),
        output_dir=str(output_dir),
        reward_weights=reward_weights,
        # TRL's own MLflow integration logs all its metrics into the pipeline's run when one is active.
        report_to=["mlflow"] if _mlflow_run_active() else [],
        remove_unused_columns=False,
        disable_tqdm=True,  # progress lines come from ProgressLogCallback
    )
