"""SFT warm-up before GRPO: behavioural imitation of the ideal answer (VRFT-Aug, methods.md §5), on TRL's
``SFTTrainer``.

Teacher-forced cross-entropy on ``prompts.target_completion`` targets (the ground-truth box in the model-input
frame, pixels, xyxy), loss on the completion tokens only (a prompt-completion dataset: TRL's vision collator
masks the prompt). It makes a randomly initialised tiny model emit parseable
``<answer>{"bbox_2d": [...]}</answer>`` completions, so GRPO rewards vary within a group; on a real Instruct
model it is an optional warm start. The early stop is a callback: every ``check_every`` steps a score (the
greedy val hit rate) is computed on the main process and the warm-up ends once it reaches the bar.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine")
# Our names -> transformers' scheduler names (both after the 10 % linear warm-up).
_TRANSFORMERS_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine"}


@dataclass
class SFTExample:
    """One imitation target: the chat ``messages`` (one user turn with an image part), the PIL ``image`` and
    the ``target`` completion text (the assistant turn; the chat template closes it with ``<|im_end|>``)."""

    messages: list[dict]
    image: Any
    target: str


@dataclass
class SFTResult:
    """What the warm-up did: ``steps`` run, ``losses`` per step (mean token cross-entropy, nats), wall ``seconds``;
    ``checks`` the early-stop criterion's values and whether it ended the warm-up (``stopped_early``);
    ``token_accuracy`` TRL's per-step mean completion-token accuracy."""

    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    checks: list[tuple[int, float]] = field(default_factory=list)  # (step, value of the stop criterion)
    stopped_early: bool = False
    token_accuracy: list[float] = field(default_factory=list)

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else float("nan")

    @property
    def last_loss(self) -> float:
        """Mean of the last 10 steps' losses."""
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else float("nan")


def sft_dataset(examples: Sequence[SFTExample]) -> Any:
    """A conversational prompt-completion ``datasets.Dataset`` (``prompt``, ``completion``, ``image``)."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": ex.messages,
                "completion": [{"role": "assistant", "content": [{"type": "text", "text": ex.target}]}],
                "image": ex.image,
            }
            for ex in examples
        ]
    )


def _callback_classes():
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        """Collects each step's loss and token accuracy (``logging_steps=1``) and reports ``on_step``."""

        def __init__(self, result: SFTResult, on_step: Callable[[int, float], None] | None) -> None:
            self.result, self.on_step = result, on_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(f"sft_warmup: loss is {loss} at step {state.global_step}")
            self.result.losses.append(loss)
            if "mean_token_accuracy" in logs:
                self.result.token_accuracy.append(float(logs["mean_token_accuracy"]))
            if self.on_step is not None:
                self.on_step(state.global_step, loss)

    class EarlyStop(TrainerCallback):
        """Every ``check_every`` steps (not the last) score the policy on the main process; stop at ``stop_at``."""

        def __init__(
            self, result: SFTResult, stop_when, check_every: int, stop_at: float, steps: int
        ) -> None:
            self.result, self.stop_when = result, stop_when
            self.check_every, self.stop_at, self.steps = check_every, stop_at, steps

        def on_step_end(self, args, state, control, model=None, **kwargs):
            from accelerate import PartialState
            from accelerate.utils import broadcast_object_list

            step = state.global_step
            if step % self.check_every or step >= self.steps:
                return
            # One scorer, one decision: every rank must stop at the same step or DDP would wait forever.
            box = [self.stop_when(step) if PartialState().is_main_process else None]
            score = broadcast_object_list(box)[0]
            if model is not None:
                model.train()
            if score is None:
                return
            self.result.checks.append((step, float(score)))
            if score >= self.stop_at:
                self.result.steps, self.result.stopped_early = step, True
                control.should_training_stop = True
                logger.info("SFT warm-up: stop criterion %.3f >= %.3f at step %d", score, self.stop_at, step)

    return StepRecorder, EarlyStop


def build_sft_trainer(
    model: Any,
    processor: Any,
    examples: Sequence[SFTExample],
    output_dir: str,
    *,
    steps: int,
    learning_rate: float,
    batch_size: int,
    max_grad_norm: float = 1.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    bf16: bool = False,
    use_cpu: bool = True,
    lr_schedule: str = "constant",
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> Any:
    """TRL's ``SFTTrainer`` for the warm-up (see :func:`sft_warmup` for the arguments); saves nothing."""
    from trl import SFTConfig, SFTTrainer

    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    args = SFTConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        learning_rate=learning_rate,
        lr_scheduler_type=_TRANSFORMERS_SCHEDULES[lr_schedule],
        warmup_steps=max(1, steps // 10),
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        use_cpu=use_cpu,
        max_length=None,  # never cut an image's tokens: the frame is bounded by the processor's max_pixels
        completion_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],  # the caller logs the curve as sft/* (GRPO's own metrics share the run's step axis)
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(examples),
        processing_class=processor,
        callbacks=list(callbacks),
    )
    if not progress:  # disable_tqdm makes Trainer print every log dict instead
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def sft_warmup(
    model: Any,
    processor: Any,
    examples: Sequence[SFTExample],
    *,
    steps: int,
    learning_rate: float = 3e-3,
    batch_size: int = 8,
    max_grad_norm: float = 1.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
    bf16: bool = False,
    use_cpu: bool | None = None,
    lr_schedule: str = "constant",
    stop_when: Callable[[int], float | None] | None = None,
    check_every: int = 50,
    stop_at: float = 1.0,
) -> SFTResult:
    """Train ``model`` in place with TRL's ``SFTTrainer`` for ``steps`` optimizer steps of ``batch_size``
    examples per device (seeded shuffle, reshuffled each pass over ``examples``). AdamW; a 10 % linear warm-up,
    then ``lr_schedule``: ``constant``, or ``cosine`` (decay to 0 at the last step: the checkpoint GRPO starts
    from is not caught mid-oscillation).

    Early stop: every ``check_every`` steps ``stop_when(step)`` returns a score (e.g. a validation hit rate);
    the warm-up ends once it reaches ``stop_at``, so it hands over a policy that is warm, not converged.

    ``on_step(step, loss)`` is called after each step (1-based). ``bf16`` runs the forward pass under bf16
    autocast; the weights and AdamW state keep the model's dtype (fp32 master weights). ``use_cpu`` (None: when
    CUDA is missing) keeps the run on the CPU. Nothing is saved: the caller saves ``model``. Returns
    :class:`SFTResult`.
    """
    import torch

    if steps <= 0:
        return SFTResult(steps=0)
    if not examples:
        raise ValueError("sft_warmup: no examples (the train split is empty)")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("sft_warmup: the model has no trainable parameters")
    result = SFTResult(steps=steps)
    recorder_cls, early_stop_cls = _callback_classes()
    callbacks = [recorder_cls(result, on_step)]
    if stop_when is not None:
        callbacks.append(early_stop_cls(result, stop_when, check_every, stop_at, steps))
    was_training = model.training
    with tempfile.TemporaryDirectory(prefix="medloc-sft-") as scratch:  # save_strategy="no": stays empty
        trainer = build_sft_trainer(
            model,
            processor,
            examples,
            scratch,
            steps=steps,
            learning_rate=learning_rate,
            batch_size=batch_size,
            max_grad_norm=max_grad_norm,
            weight_decay=weight_decay,
            seed=seed,
            bf16=bf16,
            use_cpu=not torch.cuda.is_available() if use_cpu is None else use_cpu,
            lr_schedule=lr_schedule,
            progress=progress,
            callbacks=callbacks,
        )
        t0 = time.perf_counter()
        try:
            trainer.train()
        finally:
            model.train(was_training)
        result.seconds = time.perf_counter() - t0
    if not result.stopped_early:
        result.steps = int(trainer.state.global_step)
    logger.info(
        "SFT warm-up: %d steps in %.1f s, loss %.3f -> %.3f",
        result.steps,
        result.seconds,
        result.first_loss,
        result.last_loss,
    )
    return result
