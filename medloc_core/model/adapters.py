"""The trainable adapter of a GRPO run: full fine-tuning (none), LoRA (peft, applied by TRL) or MLAE (masked rank-1
experts, applied here in place; ``model/mlae.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ADAPTERS = ("full", "lora", "mlae")


def attach_adapter_for_training(
    model: Any,
    adapter: str,
    *,
    target_modules: Sequence[str] | str,
    r: int,
    alpha: float,
    dropout: float,
    mlae_drop_rate: float,
    gradient_checkpointing: bool,
) -> Any:
    """Prepare ``model`` for ``adapter`` training; return the peft ``LoraConfig`` TRL applies for ``lora`` (None
    otherwise). ``mlae`` wraps the ``target_modules`` linears in place (rank ``r``, λ initialised to ``alpha``,
    expert dropout ``mlae_drop_rate``, input dropout ``dropout``)."""
    if adapter == "lora":
        from peft import LoraConfig

        return LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM"
        )
    if adapter == "mlae":
        from medloc_core.model import mlae  # lazy: imports torch

        mlae.apply_mlae(
            model, target_modules, r=r, lora_alpha=alpha, drop_rate=mlae_drop_rate, dropout=dropout
        )
        if gradient_checkpointing:
            model.enable_input_require_grads()
    return None
