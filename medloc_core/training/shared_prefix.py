"""A GRPO batch with each distinct prompt run once (a shared prefix): the training forward and generation.

A GRPO batch holds every prompt (text + image) ``num_generations`` times, once per completion. With causal
attention the prompt's activations do not depend on the completion, so each distinct prompt (vision tower
included) can run once, its key/value cache be copied to the rows that share it, and only the completion tokens
run on top of it:

* :func:`shared_prefix_log_probs`, the training forward: the log-probs equal those of the full forward up to float
  rounding, and so do the gradients (a sum over the completions: the cache copy is a differentiable index);
* :func:`shared_prefix_generate`, generation: the prefill runs once per distinct prompt, then the decoding step of
  transformers' ``generate`` (its logits processors, a draw from their distribution) runs on every row.

For the embedded recipe (4 prompts x 16 completions, 81 prompt + 29 completion tokens) the forward runs ~2,200
token positions instead of ~7,000 per step, and generation prefills 4 prompts instead of 64
(``bench/step_profile.py``). Both apply to Qwen2.5-VL-style models (``model.model.get_rope_index``, M-RoPE
positions) with one image per prompt, on CPU tensors, without gradient checkpointing, called directly (not
through a DDP wrapper; inside a PEFT model the adapters are part of the modules run); otherwise they return
``None`` and the caller runs TRL's or transformers' own path.
"""

from __future__ import annotations

from typing import Any

from medloc_core.model.cpu_kernels import token_log_probs


def _checkpointing(model: Any) -> bool:
    """Whether gradient (activation) checkpointing is on: the layers then refuse a key/value cache."""
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def _unique_rows(
    prompt_ids: Any, prompt_mask: Any, pixel_values: Any, rows_per_image: int
) -> tuple[Any, Any]:
    """(first row of each distinct prompt, index of its distinct prompt for every row)."""
    import torch

    # Rows are grouped by their prompt tokens and a checksum of their pixels, then each is compared in full with
    # its group's first row (torch.equal: no copy of the ~14 MB of pixel values into Python bytes).
    groups: dict[tuple, list[int]] = {}
    firsts: list[int] = []
    index: list[int] = []
    pixels = pixel_values.detach().reshape(prompt_ids.shape[0], rows_per_image, -1)
    sums = pixels.sum(dim=(1, 2)).tolist()
    for row in range(prompt_ids.shape[0]):
        key = (prompt_ids[row].numpy().tobytes(), prompt_mask[row].numpy().tobytes(), sums[row])
        for candidate in groups.setdefault(key, []):
            if torch.equal(pixels[row], pixels[firsts[candidate]]):
                index.append(candidate)
                break
        else:
            groups[key].append(len(firsts))
            index.append(len(firsts))
            firsts.append(row)
    return torch.tensor(firsts), torch.tensor(index)


def shared_prefix_log_probs(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    logits_to_keep: int,
    *,
    temperature: float,
    pixel_values: Any = None,
    image_grid_thw: Any = None,
    num_images: list[int] | None = None,
    mm_token_type_ids: Any = None,
    compute_entropy: bool = False,
) -> tuple[Any, Any] | None:
    """``(log_probs, entropies)`` of the last ``logits_to_keep`` tokens of each row (zero where the attention mask
    is 0), as TRL's ``_get_per_token_logps_and_entropies`` returns them; ``None`` when this batch or model is not
    one this path handles (see the module doc)."""
    import torch

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return None  # its gradient hooks run only through its own forward
    if hasattr(model, "get_base_model"):  # PEFT: the adapters live inside the base model's modules
        model = model.get_base_model()
    backbone = getattr(model, "model", None)
    if (
        backbone is None
        or not hasattr(backbone, "get_rope_index")
        or _checkpointing(model)  # no key/value cache under gradient checkpointing
        or pixel_values is None
        or image_grid_thw is None
        or mm_token_type_ids is None
        or input_ids.device.type != "cpu"  # the row keys are read on the host
        or (num_images is not None and any(n != 1 for n in num_images))
        or len(set(image_grid_thw.prod(-1).tolist())) != 1  # equal patch rows per image: one reshape
    ):
        return None
    batch, length = input_ids.shape
    prompt_len = length - logits_to_keep
    rows_per_image = int(image_grid_thw[0].prod())
    prompt_ids, prompt_mask = input_ids[:, :prompt_len], attention_mask[:, :prompt_len]
    firsts, index = _unique_rows(prompt_ids, prompt_mask, pixel_values, rows_per_image)
    if len(firsts) == batch:
        return None  # nothing shared: the plain forward is as cheap
    with torch.no_grad():  # M-RoPE positions of the distinct prompts; the completions continue from their max
        prefix_positions, _ = backbone.get_rope_index(
            prompt_ids[firsts],
            mm_token_type_ids=mm_token_type_ids[firsts, :prompt_len],
            image_grid_thw=image_grid_thw[firsts],
            attention_mask=prompt_mask[firsts],
        )
        start = prefix_positions.amax(dim=(0, 2))[index] + 1
        completion_positions = (start[:, None] + torch.arange(logits_to_keep)).unsqueeze(0).expand(3, -1, -1)
    pixels = pixel_values.reshape(batch, rows_per_image, -1)[firsts].reshape(-1, pixel_values.shape[-1])
    # Without left padding no mask is needed: causal attention already keeps every scored position from the
    # completions' right padding, which only comes after it (and building the masks costs more than the step).
    left_padded = not bool(prompt_mask.all())
    prefix = backbone(
        input_ids=prompt_ids[firsts],
        attention_mask=prompt_mask[firsts] if left_padded else None,
        position_ids=prefix_positions,
        pixel_values=pixels,
        image_grid_thw=image_grid_thw[firsts],
        mm_token_type_ids=mm_token_type_ids[firsts, :prompt_len],
        use_cache=True,
    )
    cache = prefix.past_key_values
    for layer in cache.layers:
        layer.batch_select_indices(index)  # differentiable: each prompt's gradient sums over its completions
    completion_ids = input_ids[:, prompt_len:]
    rest = backbone(
        input_ids=completion_ids,
        attention_mask=attention_mask if left_padded else None,
        position_ids=completion_positions,
        mm_token_type_ids=mm_token_type_ids[:, prompt_len:],
        past_key_values=cache,
        use_cache=True,
    )
    # Token t is predicted from the hidden state before it: the prompt's last, then the completion's.
    hidden = torch.cat([prefix.last_hidden_state[index, -1:], rest.last_hidden_state[:, :-1]], dim=1)
    logits = model.get_output_embeddings()(hidden).float() / temperature
    picked, entropy = token_log_probs(logits, completion_ids, with_entropy=compute_entropy)
    keep = attention_mask[:, prompt_len:].to(picked.dtype)
    return picked * keep, (entropy * keep if entropy is not None else None)


def sample_tokens(probs: Any) -> Any:
    """One token per row drawn from ``probs`` (rows of probabilities) by inverting the cumulative distribution
    with one uniform draw per row: the distribution of ``torch.multinomial(probs, 1)`` at ~1/10 of its CPU cost
    for 64 x 640 (0.1 ms vs 1 ms). A token of probability 0 is never drawn."""
    import torch

    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp(max=probs.shape[-1] - 1).squeeze(1)


class _TopPFromTopK:
    """transformers' ``TopPLogitsWarper`` (keep the most likely tokens until their mass reaches ``top_p``) computed
    from the ``k`` largest scores instead of a full sort: on CPU ``torch.sort`` of 64 x 640 scores takes ~2 ms,
    ``torch.topk(k=32)`` ~0.1 ms. A row whose ``k`` best tokens hold less than ``top_p`` goes to the full warper.
    HF removes a token when the mass of the tokens ranked above it is >= ``top_p``; so does this."""

    def __init__(self, warper: Any, k: int = 32) -> None:
        self.warper, self.k = warper, k

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        k = min(self.k, scores.shape[-1])
        probs = torch.softmax(scores, dim=-1)
        top, order = torch.topk(probs, k, dim=-1)
        above = top.cumsum(-1) - top  # mass of the tokens ranked above each of the k
        if bool((top.sum(-1) < self.warper.top_p).any()):
            return self.warper(input_ids, scores)
        keep = above < self.warper.top_p
        keep[:, : self.warper.min_tokens_to_keep] = True
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter(1, order, keep)
        return scores.masked_fill(~kept, self.warper.filter_value)


def _fast_top_p(processor: Any) -> Any:
    from transformers.generation.logits_process import TopPLogitsWarper

    return _TopPFromTopK(processor) if type(processor) is TopPLogitsWarper else processor


def shared_prefix_generate(model: Any, generation_config: Any = None, **inputs: Any) -> Any | None:
    """``model.generate(**inputs, generation_config=...)`` for a GRPO generation batch, with each distinct prompt
    (text + image) prefilled once and its key/value cache copied to the rows that share it.

    Decoding is transformers' own sampling step: the logits processors and warpers ``generate`` would build from
    ``generation_config`` (suppressed tokens, temperature, top-k, top-p, ...), a draw from the resulting
    distribution (:func:`sample_tokens`; argmax when ``do_sample`` is off), ``pad_token_id`` after a row's EOS, and a stop once every row has ended or after
    ``max_new_tokens``. Returns ``prompt + completion`` ids like ``generate``, or ``None`` when the call is not a
    plain single-image sampling call with repeated prompts (the caller then runs ``generate`` itself).
    """
    import torch

    input_ids, attention_mask = inputs.get("input_ids"), inputs.get("attention_mask")
    pixel_values, image_grid_thw = inputs.get("pixel_values"), inputs.get("image_grid_thw")
    mm_token_type_ids = inputs.get("mm_token_type_ids")
    known = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    config = generation_config
    backbone = getattr(model, "model", None)
    if (
        config is None
        or set(inputs) - known
        or input_ids is None
        or attention_mask is None
        or pixel_values is None
        or image_grid_thw is None
        or mm_token_type_ids is None
        or backbone is None
        or not hasattr(backbone, "get_rope_index")
        or _checkpointing(model)
        or input_ids.device.type != "cpu"
        or image_grid_thw.shape[0] != input_ids.shape[0]  # one image per prompt
        or len(set(image_grid_thw.prod(-1).tolist())) != 1
        or (config.num_beams or 1) != 1
        or (config.num_return_sequences or 1) != 1
        or config.max_new_tokens is None
    ):
        return None
    batch, prompt_len = input_ids.shape
    rows_per_image = int(image_grid_thw[0].prod())
    firsts, index = _unique_rows(input_ids, attention_mask, pixel_values, rows_per_image)
    if len(firsts) == batch:
        return None
    try:
        processors = model._get_logits_processor(
            generation_config=config,
            input_ids_seq_length=prompt_len,
            device=input_ids.device,
            model_kwargs={},
        )
    except TypeError:  # another transformers' private signature: let generate do it all
        return None
    processors = type(processors)(_fast_top_p(p) for p in processors)
    eos = config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long)
    pad = config.pad_token_id if config.pad_token_id is not None else (int(eos[0]) if len(eos) else 0)

    with torch.inference_mode():  # no autograd bookkeeping at all while decoding
        sequences = _decode(
            backbone, model.get_output_embeddings(), processors, config, pad, eos, inputs, firsts, index
        )
    return sequences.clone()  # a normal tensor again, for the caller's own ops


def _preallocate(layer: Any, extra: int) -> None:
    """Give a key/value cache layer room for ``extra`` more tokens: each decoding step writes into the buffer
    instead of concatenating a new, one-token-longer copy of the whole cache (transformers' dynamic layer)."""
    length = layer.keys.shape[-2]
    buffers = []
    for tensor in (layer.keys, layer.values):
        buffer = tensor.new_empty(*tensor.shape[:-2], length + extra, tensor.shape[-1])
        buffer[..., :length, :] = tensor
        buffers.append(buffer)
    keys, values = buffers

    def update(key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        start = layer.keys.shape[-2]
        end = start + key_states.shape[-2]
        keys[..., start:end, :] = key_states
        values[..., start:end, :] = value_states
        layer.keys, layer.values = keys[..., :end, :], values[..., :end, :]
        return layer.keys, layer.values

    layer.keys, layer.values = keys[..., :length, :], values[..., :length, :]
    layer.update = update


def _decode(
    backbone: Any,
    head: Any,
    processors: Any,
    config: Any,
    pad: int,
    eos: Any,
    inputs: dict,
    firsts: Any,
    index: Any,
) -> Any:
    """The prefill of the distinct prompts and the sampling loop of :func:`shared_prefix_generate`."""
    import torch

    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    pixel_values, image_grid_thw = inputs["pixel_values"], inputs["image_grid_thw"]
    mm_token_type_ids = inputs["mm_token_type_ids"]
    batch = input_ids.shape[0]
    rows_per_image = int(image_grid_thw[0].prod())
    positions, _ = backbone.get_rope_index(
        input_ids[firsts],
        mm_token_type_ids=mm_token_type_ids[firsts],
        image_grid_thw=image_grid_thw[firsts],
        attention_mask=attention_mask[firsts],
    )
    pixels = pixel_values.reshape(batch, rows_per_image, -1)[firsts].reshape(-1, pixel_values.shape[-1])
    prefix = backbone(
        input_ids=input_ids[firsts],
        attention_mask=attention_mask[firsts],
        position_ids=positions,
        pixel_values=pixels,
        image_grid_thw=image_grid_thw[firsts],
        mm_token_type_ids=mm_token_type_ids[firsts],
        use_cache=True,
    )
    cache = prefix.past_key_values
    for layer in cache.layers:
        layer.batch_select_indices(index)
        _preallocate(layer, config.max_new_tokens)
    hidden = prefix.last_hidden_state[index, -1]
    # Text after the prompt continues from the prompt's largest position, in all three M-RoPE sections.
    next_position = positions.amax(dim=(0, 2))[index] + 1
    sequences, mask = input_ids, attention_mask
    no_padding = bool(attention_mask.all())
    unfinished = torch.ones(batch, dtype=torch.bool)
    for step in range(config.max_new_tokens):
        scores = processors(sequences, head(hidden).float())
        if config.do_sample:
            tokens = sample_tokens(torch.softmax(scores, dim=-1))
        else:
            tokens = scores.argmax(dim=-1)
        tokens = torch.where(unfinished, tokens, torch.full_like(tokens, pad))
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        unfinished &= ~torch.isin(tokens, eos)
        if not unfinished.any() or step + 1 == config.max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        out = backbone(
            input_ids=tokens[:, None],
            attention_mask=None if no_padding else mask,  # no mask to build when nothing is padded
            position_ids=(next_position + step).view(1, batch, 1).expand(3, batch, 1),
            past_key_values=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[:, -1]
    return sequences
