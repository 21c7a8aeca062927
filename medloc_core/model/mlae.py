"""MLAE: masked LoRA experts (Wang et al., arXiv 2405.18897; official ``MLAE_Linear``), as a module swap.

A rank-``r`` update is split into ``r`` rank-1 experts, each with its own learnable scale ``λ_i``::

    y = W0 x + b + Σ_i m̃_i λ_i (a_i · dropout(x)) b_i        (training)
    W = W0 + Bᵀ diag(λ) A                                      (eval / merged; no mask)

* ``A ∈ R^{r×in}`` Kaiming-uniform (a = √5), ``B ∈ R^{r×out}`` zeros, so the adapted model starts equal to the
  base model (the GRPO reference policy); ``λ ∈ R^r`` starts at ``lora_alpha`` (no α/r scaling).
* ``m̃`` is expert-level inverted dropout on ``λ``: each expert is kept with probability ``1 - drop_rate`` and
  scaled by ``1 / (1 - drop_rate)``, resampled on every training forward (the paper's "stochastic masking").
* Masks are drawn only in a training forward that builds a graph (``module.training`` and grad enabled). GRPO
  rollouts (``generate``) and the no-grad log-prob passes run with every expert on, so the completions come
  from the deterministic policy the loss is computed against, not from a mask resampled per token.

:func:`apply_mlae` replaces matching ``nn.Linear`` modules with :class:`MLAELinear` and freezes every other
parameter; :func:`save_mlae` / :func:`load_mlae` store only the MLAE tensors; :func:`merge_mlae` folds the
experts into the base weights and swaps plain ``nn.Linear`` modules back.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

MLAE_CONFIG_NAME = "mlae_config.json"
MLAE_WEIGHTS_NAME = "mlae_model.safetensors"
_PARAM_NAMES = ("mlae_A", "mlae_B", "mlae_lambda")


class MLAELinear(nn.Module):
    """``nn.Linear`` plus ``r`` masked rank-1 experts. The wrapped layer is kept as ``base_layer`` (frozen)."""

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        lora_alpha: float = 1.0,
        drop_rate: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"MLAE rank r must be positive, got {r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"MLAE drop_rate must be in [0, 1), got {drop_rate}")
        self.base_layer = base_layer
        self.r, self.drop_rate = r, float(drop_rate)
        # The trainable tensors (λ included) are fp32 whatever the base's dtype: a bf16 base (mixed precision)
        # would otherwise round most small updates of A, B and λ away.
        dev = base_layer.weight.device
        self.mlae_A = nn.Parameter(torch.empty(r, base_layer.in_features, dtype=torch.float32, device=dev))
        self.mlae_B = nn.Parameter(torch.zeros(r, base_layer.out_features, dtype=torch.float32, device=dev))
        self.mlae_lambda = nn.Parameter(torch.full((r,), float(lora_alpha), dtype=torch.float32, device=dev))
        nn.init.kaiming_uniform_(self.mlae_A, a=math.sqrt(5))
        self.input_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.mask_draws = 0  # how many expert masks were sampled (tests count them)
        for p in base_layer.parameters():
            p.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:  # code that reads .weight (e.g. dtype checks) sees the base weight
        return self.base_layer.weight

    def expert_scales(self) -> torch.Tensor:
        """λ, shape ``(r,)``, with expert-level inverted dropout in a training forward under grad; all experts
        on (no mask) in eval mode and under ``torch.no_grad`` (generation, reference / old log-probs)."""
        lam = self.mlae_lambda
        if self.training and self.drop_rate > 0 and torch.is_grad_enabled():
            self.mask_draws += 1
            keep = torch.bernoulli(torch.full_like(lam, 1.0 - self.drop_rate))
            lam = lam * keep / (1.0 - self.drop_rate)
        return lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        x_in = self.input_dropout(x) if torch.is_grad_enabled() else x  # same rule as the expert mask
        h = x_in.to(self.mlae_A.dtype) @ self.mlae_A.t()  # (..., r): a_i · x
        delta = (h * self.expert_scales()) @ self.mlae_B  # Σ_i m̃_i λ_i (a_i·x) b_i
        return out + delta.to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """``Bᵀ diag(λ) A`` with shape ``(out, in)``: the merged update, no mask."""
        return self.mlae_B.t() @ (self.mlae_lambda[:, None] * self.mlae_A)

    def extra_repr(self) -> str:
        return f"r={self.r}, drop_rate={self.drop_rate}"


def _matches(name: str, target_modules: Sequence[str] | str) -> bool:
    if isinstance(target_modules, str):  # a regex over the full module name, as in peft
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def apply_mlae(
    model: nn.Module,
    target_modules: Sequence[str] | str,
    r: int,
    lora_alpha: float = 1.0,
    drop_rate: float = 0.0,
    dropout: float = 0.0,
) -> list[str]:
    """Swap every ``nn.Linear`` whose name matches ``target_modules`` for an :class:`MLAELinear`.

    ``target_modules`` is a list of name suffixes (``["q_proj", "v_proj"]``, peft-style) or one regex over the
    full module name. Freezes all parameters of ``model`` except the new MLAE ones. Returns the replaced
    module names (sorted); raises ``ValueError`` if nothing matched.
    """
    names = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n and _matches(n, target_modules)
    ]
    if not names:
        raise ValueError(
            f"MLAE target_modules {target_modules!r} matched no nn.Linear in {type(model).__name__}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, MLAELinear(getattr(parent, child), r, lora_alpha, drop_rate, dropout))
    model._mlae_config = {
        "target_modules": list(target_modules) if not isinstance(target_modules, str) else target_modules,
        "r": r,
        "lora_alpha": lora_alpha,
        "drop_rate": drop_rate,
        "dropout": dropout,
    }
    return sorted(names)


def mlae_modules(model: nn.Module) -> dict[str, MLAELinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MLAELinear)}


def mlae_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the MLAE tensors, keyed ``<module name>.mlae_A`` etc. (names of the live, unwrapped model)."""
    return {
        f"{name}.{p}": getattr(mod, p).detach().cpu().contiguous()
        for name, mod in mlae_modules(model).items()
        for p in _PARAM_NAMES
    }


def save_mlae(model: nn.Module, out_dir: str | os.PathLike, *, base_model: str | None = None) -> Path:
    """Write ``mlae_config.json`` (ranks, targets, base model path) and ``mlae_model.safetensors``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(getattr(model, "_mlae_config", {}))
    if not mlae_modules(model):
        raise ValueError("model has no MLAE modules to save")
    cfg["base_model"] = base_model or getattr(getattr(model, "config", None), "_name_or_path", None)
    cfg["modules"] = sorted(mlae_modules(model))
    (out / MLAE_CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_file(mlae_state_dict(model), str(out / MLAE_WEIGHTS_NAME))
    return out


def load_mlae(model: nn.Module, adapter_dir: str | os.PathLike) -> list[str]:
    """Load saved MLAE tensors into ``model``, applying MLAE first (from the saved config) if needed.

    Every saved tensor must land on a module of ``model`` and vice versa; otherwise ``ValueError``.
    """
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / MLAE_CONFIG_NAME
    if not cfg_path.is_file():
        raise ValueError(f"{adapter_dir}: missing {MLAE_CONFIG_NAME}")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if not mlae_modules(model):
        for key in ("target_modules", "r", "lora_alpha"):
            if key not in cfg:
                raise ValueError(f"{cfg_path}: field {key!r} missing")
        apply_mlae(
            model,
            cfg["target_modules"],
            cfg["r"],
            cfg["lora_alpha"],
            cfg.get("drop_rate", 0.0),
            cfg.get("dropout", 0.0),
        )
    state = load_file(str(adapter_dir / MLAE_WEIGHTS_NAME))
    modules = mlae_modules(model)
    expected = {f"{n}.{p}" for n in modules for p in _PARAM_NAMES}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:5], sorted(set(state) - expected)[:5]
        raise ValueError(
            f"{adapter_dir}: MLAE tensors do not match the model (missing {missing}, unexpected {extra})"
        )
    with torch.no_grad():
        for key, value in state.items():
            name, _, pname = key.rpartition(".")
            getattr(modules[name], pname).copy_(value)
    return sorted(modules)


def merge_mlae(model: nn.Module) -> list[str]:
    """Fold ``Bᵀ diag(λ) A`` into each base weight and put the plain ``nn.Linear`` back. Returns merged names."""
    merged = []
    for name, mod in mlae_modules(model).items():
        base = mod.base_layer
        with torch.no_grad():
            base.weight += mod.delta_weight().to(base.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, base)
        merged.append(name)
    if hasattr(model, "_mlae_config"):
        del model._mlae_config
    return sorted(merged)
