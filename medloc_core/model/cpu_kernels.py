"""Two exact rewrites that make a GRPO step of a small Qwen2.5-VL cheaper where no Triton kernel runs (CPU).

Both compute the same numbers as the code they replace (up to float rounding), and both keep TRL's trainer and
transformers' model classes; ``bench/step_profile.py`` measures what they save.

* :func:`linear_patch_embed`: Qwen2.5-VL embeds each image patch with a ``Conv3d`` whose kernel equals its stride
  and its input (one patch of ``C x T x P x P`` values), i.e. one matrix product. On CPU the 3-D convolution
  costs ~40 ms per batch of the stand-in's 64 images; the same product as ``F.linear`` costs ~1 ms.
* :func:`compact_log_probs`: TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``) scores only the
  completion positions on Triton devices but, elsewhere, *every* position in tiles (for the embedded recipe 109
  positions per sequence where 29 are completions), through a chunked autograd function built for 100k-token
  vocabularies. For a small vocabulary on CPU, projecting only the labelled positions and taking a plain
  ``log_softmax`` is the same computation at a fraction of the cost.
"""

from __future__ import annotations

import functools
import types
from typing import Any

#: Above this vocabulary size the plain log-softmax materialises too much; TRL's tiles are kept.
MAX_COMPACT_VOCAB = 32_768


def _patch_embed_forward(self: Any, hidden_states: Any) -> Any:
    import torch.nn.functional as F

    weight = self.proj.weight  # (embed_dim, C, T, P, P): the Conv3d's own parameter, trained as before
    flat = hidden_states.to(dtype=weight.dtype).reshape(-1, weight[0].numel())
    return F.linear(flat, weight.reshape(weight.shape[0], -1))


def token_log_probs(logits: Any, targets: Any, *, with_entropy: bool) -> tuple[Any, Any]:
    """``log p(target)`` at each position of ``logits`` (float, last dim the vocabulary), and with
    ``with_entropy`` the entropy of each position's distribution, detached: an observable (metrics, entropy
    masks), as in TRL, with no gradient. The one place both GRPO log-prob paths compute these."""
    import torch

    logp_all = torch.log_softmax(logits, dim=-1)
    picked = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return picked, None
    detached = logp_all.detach()
    return picked, -(detached.exp() * detached).sum(-1)


def linear_patch_embed(model: Any) -> int:
    """Run every Qwen2.5-VL vision patch embedding of ``model`` as one ``F.linear`` on the Conv3d's weight.

    Only modules whose convolution has kernel == stride, no bias and no padding are changed (the weight, the
    state dict and checkpoints are untouched). Returns how many modules were changed.
    """
    changed = 0
    for module in model.modules():
        proj = getattr(module, "proj", None)
        if type(module).__name__ != "Qwen2_5_VisionPatchEmbed" or proj is None:
            continue
        if tuple(proj.kernel_size) != tuple(proj.stride) or proj.bias is not None or any(proj.padding):
            continue
        module.forward = types.MethodType(_patch_embed_forward, module)
        changed += 1
    return changed


def compact_log_probs(model: Any, temperature: float) -> bool:
    """Replace TRL's fused-LM-head forward on ``model`` by one that projects only the labelled positions.

    TRL's trainer calls ``model(..., labels=labels, fused_lm_head=True)`` for the policy's per-token log-probs
    and entropies; without ``fused_lm_head`` the forward stays the model's own (generation is unchanged).
    Applied only where TRL would not use its Triton kernel (a model on CPU), for a model without logit
    softcapping or scaling and a vocabulary up to :data:`MAX_COMPACT_VOCAB`. Returns whether it was applied.
    """
    from trl.trainer.utils import FusedCausalLMOutput

    text_config = model.config.get_text_config()
    lm_head = model.get_output_embeddings()
    if (
        lm_head is None
        or lm_head.weight.device.type != "cpu"
        or lm_head.weight.shape[0] > MAX_COMPACT_VOCAB
        or getattr(text_config, "final_logit_softcapping", None) is not None
        or getattr(text_config, "logit_scale", None) not in (None, 1.0)
    ):
        return False
    fused_forward = model.forward  # TRL's, which runs the model's own forward without fused_lm_head

    @functools.wraps(type(model).forward)  # generate() validates its kwargs against this signature
    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None, **kwargs: Any) -> Any:
        if not fused_lm_head:
            return fused_forward(*args, labels=labels, **kwargs)
        kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        head = self.get_output_embeddings()
        logits = head(hidden[mask]).float() / temperature
        picked, entropy = token_log_probs(logits, targets[mask], with_entropy=True)
        log_probs = hidden.new_zeros(mask.shape, dtype=picked.dtype).masked_scatter(mask, picked)
        entropies = hidden.new_zeros(mask.shape, dtype=entropy.dtype).masked_scatter(mask, entropy)
        loss = -log_probs.sum() / mask.sum().clamp(min=1)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropies, label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True
