"""SFT warm-up before GRPO: behavioural imitation of the ideal answer (VRFT-Aug, docs/method.md §7).

A plain PyTorch loop of teacher-forced cross-entropy on ``prompts.target_completion`` targets (the
ground-truth box in the model-input frame, pixels, xyxy), loss on the completion tokens only. It makes a
randomly initialised tiny model emit parseable ``<answer>{"bbox_2d": [...]}</answer>`` completions, so GRPO
rewards vary within a group; on a real Instruct model it is an optional warm start.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class SFTExample:
    """One imitation target: the chat ``messages`` (one user turn with an image part), the PIL ``image`` and
    the ``target`` completion text (without the end-of-turn token, which is appended here)."""

    messages: list[dict]
    image: Any
    target: str


@dataclass
class SFTResult:
    """What the warm-up did: ``steps`` run, ``losses`` per step (mean token cross-entropy, nats), wall ``seconds``;
    ``checks`` the early-stop criterion's values and whether it ended the warm-up (``stopped_early``)."""

    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    checks: list[tuple[int, float]] = field(default_factory=list)  # (step, value of the stop criterion)
    stopped_early: bool = False

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else float("nan")

    @property
    def last_loss(self) -> float:
        """Mean of the last 10 steps' losses."""
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else float("nan")


def build_batch(processor: Any, examples: Sequence[SFTExample]) -> dict[str, Any]:
    """Tokenize prompts + targets (left padding) and mask everything but the target tokens in ``labels``."""
    import torch

    tok = processor.tokenizer
    eos = tok.eos_token or "<|im_end|>"
    prompts_txt = [
        processor.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=False)
        for ex in examples
    ]
    texts = [p + ex.target + eos for p, ex in zip(prompts_txt, examples)]
    enc = processor(text=texts, images=[[ex.image] for ex in examples], padding=True, return_tensors="pt")
    labels = torch.full_like(enc["input_ids"], IGNORE_INDEX)
    for i, ex in enumerate(examples):
        target_ids = tok(ex.target + eos, add_special_tokens=False)["input_ids"]
        n = len(target_ids)
        tail = enc["input_ids"][i, -n:].tolist()
        if tail != target_ids:  # the prompt/target boundary tokenized differently than the target alone
            raise ValueError(f"SFT example {i}: target tokens do not line up with the encoded sequence")
        labels[i, -n:] = enc["input_ids"][i, -n:]
    enc["labels"] = labels
    return dict(enc)


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
    lr_schedule: str = "constant",
    stop_when: Callable[[int], float | None] | None = None,
    check_every: int = 50,
    stop_at: float = 1.0,
) -> SFTResult:
    """Train ``model`` in place for ``steps`` optimizer steps of ``batch_size`` examples (sampled with a seeded
    shuffle, cycling through ``examples``). AdamW; a 10 % linear warm-up, then ``lr_schedule``: ``constant``, or
    ``cosine`` (decay to 0 at the last step: the checkpoint GRPO starts from is not caught mid-oscillation).

    Early stop: every ``check_every`` steps ``stop_when(step)`` returns a score (e.g. a validation hit rate);
    the warm-up ends once it reaches ``stop_at``, so it hands over a policy that is warm, not converged.

    ``on_step(step, loss)`` is called after each step (1-based); ``progress`` logs about 8 lines (loss, and the
    latest check's score). ``bf16`` runs the forward pass under bf16
    autocast; the weights and AdamW state keep the model's dtype (fp32 master weights). Returns
    :class:`SFTResult`.
    """
    import torch

    if steps <= 0:
        return SFTResult(steps=0)
    if not examples:
        raise ValueError("sft_warmup: no examples (the train split is empty)")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("sft_warmup: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    warmup = max(1, steps // 10)

    def factor(s: int) -> float:
        if s < warmup or lr_schedule == "constant":
            return min(1.0, (s + 1) / warmup)
        return 0.5 * (1.0 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = random.Random(seed)
    order: list[int] = []
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    result = SFTResult(steps=steps)
    t0 = time.perf_counter()
    # About 8 progress lines whatever the length (at the early-stop checks when there are any).
    log_every = max(1, steps // 8)
    if stop_when is not None:
        log_every = check_every * max(1, round(log_every / check_every))
    try:
        for step in range(1, steps + 1):
            batch_idx = []
            while len(batch_idx) < batch_size:
                if not order:
                    order = list(range(len(examples)))
                    rng.shuffle(order)
                batch_idx.append(order.pop())
            batch = build_batch(processor, [examples[i] for i in batch_idx])
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(next(model.parameters()).dtype)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"sft_warmup: loss is {loss.item()} at step {step}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            sched.step()
            optimizer.zero_grad(set_to_none=True)
            result.losses.append(float(loss.item()))
            if on_step is not None:
                on_step(step, result.losses[-1])
            score = None
            if stop_when is not None and step % check_every == 0 and step < steps:
                score = stop_when(step)
                model.train()
            if progress and step % log_every == 0:
                check = "" if score is None else f", val score {score:.3f} (hands over at {stop_at:.2f})"
                logger.info("SFT warm-up step %d/%d: loss %.3f%s", step, steps, result.losses[-1], check)
            if score is not None:
                result.checks.append((step, float(score)))
                if score >= stop_at:
                    result.steps, result.stopped_early = step, True
                    logger.info(
                        "SFT warm-up hands over at step %d: val score %.3f >= %.2f", step, score, stop_at
                    )
                    break
    finally:
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)
    result.seconds = time.perf_counter() - t0
    logger.info(
        "SFT warm-up: %d steps in %.1f s, loss %.3f -> %.3f",
        result.steps,
        result.seconds,
        result.first_loss,
        result.last_loss,
    )
    return result
