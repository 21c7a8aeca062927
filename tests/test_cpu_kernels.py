"""The CPU rewrites compute what they replace: the patch embedding (vs the Conv3d) and the compact LM head (vs
TRL's fused head), values and gradients, on the real stand-in architecture."""

from __future__ import annotations

import types

import pytest
import torch

from medloc_core.model import loading
from medloc_core.model.cpu_kernels import compact_log_probs, linear_patch_embed
from medloc_core.model.standin import ensure_tiny_model


@pytest.fixture(scope="module")
def grounder_dir(tmp_path_factory) -> str:
    return str(ensure_tiny_model(tmp_path_factory.mktemp("grounder"), size="grounder"))


def _batch(model_dir: str, n: int = 3):
    from PIL import Image

    processor = loading.load_processor(model_dir)
    loading.set_pixel_bounds(processor, 56 * 56, 112 * 112)
    rng = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray((torch.rand(84, 112, 3, generator=rng) * 255).to(torch.uint8).numpy())
        for _ in range(n)
    ]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find the lesion."}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    texts = [prompt + f'<answer>{{"bbox_2d": [{i}, 2, 30, 40]}}</answer>' for i in range(n)]
    enc = processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[:, :-12] = -100  # the last 12 tokens are the "completion"
    return dict(enc), labels


def test_linear_patch_embed_matches_the_convolution(grounder_dir):
    model = loading.load_model(grounder_dir, dtype="float32")  # load_model applies the rewrite
    embeds = [m for m in model.modules() if type(m).__name__ == "Qwen2_5_VisionPatchEmbed"]
    assert embeds and all("_patch_embed_forward" in m.forward.__func__.__name__ for m in embeds)
    embed = embeds[0]
    x = torch.randn(10, embed.proj.weight[0].numel(), requires_grad=True)
    conv = embed.proj(x.view(-1, *embed.proj.weight.shape[1:])).view(-1, embed.embed_dim)
    linear = embed(x)
    torch.testing.assert_close(linear, conv, rtol=1e-5, atol=1e-5)
    (g_conv,) = torch.autograd.grad(conv.square().sum(), embed.proj.weight)
    (g_lin,) = torch.autograd.grad(linear.square().sum(), embed.proj.weight)
    torch.testing.assert_close(g_lin, g_conv, rtol=1e-4, atol=1e-5)
    assert linear_patch_embed(torch.nn.Linear(2, 2)) == 0  # nothing else is touched


def test_compact_lm_head_matches_trls_fused_head(grounder_dir):
    from trl.trainer.utils import add_fused_lm_head

    inputs, labels = _batch(grounder_dir)
    outs, grads = [], []
    for compact in (False, True):
        model = loading.load_model(grounder_dir, dtype="float32")
        add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
        if compact:
            assert compact_log_probs(model, 0.7)
        out = model(**inputs, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        outs.append(out)
        grads.append(model.get_output_embeddings().weight.grad.clone())
    trl_out, ours = outs
    assert ours.log_probs.shape == trl_out.log_probs.shape
    torch.testing.assert_close(ours.log_probs, trl_out.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.entropy, trl_out.entropy, rtol=1e-5, atol=1e-5)
    # float32 sums over the positions in another order: ~1e-6 differences on gradients up to ~40 are rounding.
    scale = float(grads[0].abs().max())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6 * scale)
    scored = labels[:, 1:] != -100
    assert (ours.log_probs[~scored] == 0).all() and (ours.log_probs[scored] < 0).all()


def test_compact_lm_head_keeps_generation_and_skips_scaled_heads(grounder_dir):
    from trl.trainer.utils import add_fused_lm_head

    inputs, _ = _batch(grounder_dir, n=1)
    model = loading.load_model(grounder_dir, dtype="float32")
    add_fused_lm_head(model, temperature=1.0)
    before = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert compact_log_probs(model, 1.0)
    torch.testing.assert_close(model.generate(**inputs, max_new_tokens=5, do_sample=False), before)
    model.config.get_text_config().final_logit_softcapping = 30.0
    assert not compact_log_probs(model, 1.0)  # a softcapped head keeps TRL's kernel
    assert isinstance(model.forward, types.MethodType)


def _left_padded_prompts(model_dir: str, keep: int):
    """Two prompts of different lengths, left-padded as TRL pads them, each followed by ``keep`` token slots."""
    from PIL import Image

    processor = loading.load_processor(model_dir)
    loading.set_pixel_bounds(processor, 56 * 56, 112 * 112)
    texts = []
    for query in ("Find the lesion.", "Find the lesion in this dermoscopy image, please."):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    images = [[Image.new("RGB", (112, 84), c)] for c in ("red", "blue")]
    enc = processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
    enc = dict(enc)
    assert not enc["attention_mask"].all()  # the short prompt is padded on the left
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        enc[key] = torch.cat([enc[key], torch.ones(2, keep, dtype=enc[key].dtype)], dim=1)
    enc["mm_token_type_ids"][:, -keep:] = 0
    return enc


@pytest.mark.parametrize("left_padded", [False, True])
def test_shared_prefix_matches_the_full_forward(grounder_dir, left_padded):
    """Two prompts x 3 completions, shuffled as TRL shuffles a generation batch: the same log-probs, entropies
    and gradients as TRL's full forward, each distinct prompt (and image) run once; prompts of one length, or
    of two lengths with left padding."""
    from trl.trainer.utils import add_fused_lm_head

    from medloc_core.training.shared_prefix import shared_prefix_log_probs

    keep = 12
    inputs = _left_padded_prompts(grounder_dir, keep) if left_padded else _batch(grounder_dir, n=2)[0]
    order = torch.tensor([0, 1, 1, 0, 0, 1])
    rows = inputs["image_grid_thw"][0].prod()
    pixel_rows = torch.cat([torch.arange(i * rows, (i + 1) * rows) for i in order.tolist()])
    ids = inputs["input_ids"][order].clone()
    ids[:, -keep:] = torch.randint(10, 600, (len(order), keep), generator=torch.Generator().manual_seed(1))
    mask = inputs["attention_mask"][order].clone()
    mask[2, -3:] = 0  # a completion that ended early (right padding)
    batch = {
        "pixel_values": inputs["pixel_values"][pixel_rows],
        "image_grid_thw": inputs["image_grid_thw"][order],
        "mm_token_type_ids": inputs["mm_token_type_ids"][order],
    }
    results = []
    for shared in (False, True):
        model = loading.load_model(grounder_dir, dtype="float32")
        model.train()
        add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
        if shared:
            logps, entropy = shared_prefix_log_probs(
                model, ids, mask, keep, temperature=0.7, num_images=[1] * len(order), compute_entropy=True,
                **batch,
            )  # fmt: skip
        else:
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-keep] = -100
            out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, **batch)
            logps, entropy = out.log_probs[:, -keep:], out.entropy[:, -keep:]
        (logps * torch.linspace(0.5, 1.5, logps.numel()).view_as(logps)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), entropy, grads))
    (full, full_entropy, full_grads), (ours, our_entropy, our_grads) = results
    torch.testing.assert_close(ours, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(our_entropy, full_entropy, rtol=1e-4, atol=1e-5)
    assert (ours[2, -3:] == 0).all() and (ours[mask[:, -keep:] == 1] < 0).all()
    assert our_grads.keys() == full_grads.keys() and any("visual" in n for n in our_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
    # nothing shared (every prompt distinct): the caller's own path
    assert shared_prefix_log_probs(model, ids[:2], mask[:2], keep, temperature=0.7, num_images=[1, 1], **{
        "pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"],
        "mm_token_type_ids": inputs["mm_token_type_ids"]}) is None  # fmt: skip


@pytest.mark.parametrize("do_sample", [False, True])
def test_shared_prefix_generate_matches_generate(grounder_dir, do_sample):
    """A GRPO generation batch (2 prompts x 3, interleaved): the same sequences as transformers' generate when
    greedy; sampled, only tokens that generate's own processors (top-p, suppressed image token) allow."""
    from transformers import GenerationConfig

    from medloc_core.training.shared_prefix import shared_prefix_generate

    inputs, _ = _batch(grounder_dir, n=2)
    processor = loading.load_processor(grounder_dir)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find the lesion."}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    from PIL import Image

    images = [Image.new("RGB", (112, 84), c) for c in ("red", "blue")]
    order = [0, 1, 1, 0, 0, 1]
    enc = processor(text=[prompt] * 6, images=[[images[i]] for i in order], padding=True, return_tensors="pt")
    model = loading.load_model(grounder_dir, dtype="float32")
    config = GenerationConfig(
        max_new_tokens=8, do_sample=do_sample, temperature=0.7, top_p=0.7, top_k=0,
        pad_token_id=processor.tokenizer.pad_token_id, eos_token_id=[processor.tokenizer.eos_token_id],
        suppress_tokens=[model.config.image_token_id],
    )  # fmt: skip
    torch.manual_seed(3)
    ours = shared_prefix_generate(model, generation_config=config, **dict(enc))
    torch.manual_seed(3)
    theirs = model.generate(**dict(enc), generation_config=config)
    assert ours is not None
    if not do_sample:  # the same tokens; rows that share a prompt and an image answer alike
        assert torch.equal(ours, theirs)
        assert torch.equal(ours[0], ours[3]) and torch.equal(ours[1], ours[2])
    else:  # every sampled token is one generate's processors leave possible after the same prefix
        processors = model._get_logits_processor(generation_config=config, input_ids_seq_length=ours.shape[1])
        prompt_len = enc["input_ids"].shape[1]
        for t in range(prompt_len, ours.shape[1]):
            mm = torch.cat(
                [enc["mm_token_type_ids"], torch.zeros(6, t - prompt_len, dtype=torch.long)], dim=1
            )
            with torch.no_grad():
                logits = model(
                    input_ids=ours[:, :t], attention_mask=torch.ones_like(ours[:, :t]), mm_token_type_ids=mm,
                    pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"],
                ).logits[:, -1]  # fmt: skip
            allowed = torch.isfinite(processors(ours[:, :t], logits.float()))
            live = (
                ours[:, t - 1] != processor.tokenizer.pad_token_id
                if t > prompt_len
                else torch.ones(6, dtype=bool)
            )
            assert allowed[torch.arange(6), ours[:, t]][live].all(), t
    assert model.config.image_token_id not in ours[:, enc["input_ids"].shape[1] :]
    # a call it does not handle (beam search) is left to generate
    beams = GenerationConfig(max_new_tokens=4, num_beams=2)
    assert shared_prefix_generate(model, generation_config=beams, **dict(enc)) is None


def test_sample_tokens_draws_from_the_distribution():
    from medloc_core.training.shared_prefix import sample_tokens

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2], [1.0, 0.0, 0.0, 0.0, 0.0]])
    torch.manual_seed(0)
    draws = torch.stack([sample_tokens(probs) for _ in range(20_000)])
    assert set(draws[:, 0].tolist()) == {1, 3, 4} and set(draws[:, 1].tolist()) == {
        0
    }  # never a 0-probability token
    freq = torch.bincount(draws[:, 0], minlength=5).float() / len(draws)
    torch.testing.assert_close(freq, probs[0], atol=0.015, rtol=0)


def test_processor_processes_each_distinct_prompt_once(grounder_dir):
    """A batch that repeats (text, image) pairs gives the same tensors as processing every row (pixel rows copied
    per image), while the image processor sees only the distinct images."""
    from PIL import Image

    processor = loading.load_processor(grounder_dir)
    loading.set_pixel_bounds(processor, 56 * 56, 112 * 112)
    images = [Image.new("RGB", (112, 84), c) for c in ("red", "blue")] + [Image.new("RGB", (84, 112), "red")]
    texts = [
        "<|vision_start|><|image_pad|><|vision_end|>a",
        "<|vision_start|><|image_pad|><|vision_end|>bb c",
    ]
    rows = [(0, 0), (1, 1), (1, 1), (2, 0), (0, 0), (0, 1)]  # (image, text) per row
    batch_images = [
        [images[i].copy()] for i, _ in rows
    ]  # equal pixels, different objects (as datasets decodes)
    batch_texts = [texts[t] for _, t in rows]
    seen = []
    preprocess = processor.image_processor.preprocess

    def counting(imgs, **kw):
        seen.append(len(imgs))
        return preprocess(imgs, **kw)

    import numpy as np

    for tensors in ("pt", None):  # TRL's generation batch, and apply_chat_template's lists and arrays
        processor.image_processor.preprocess = counting
        seen.clear()
        ours = processor(images=batch_images, text=batch_texts, padding=True, return_tensors=tensors)
        assert seen == [4]  # 4 distinct pairs of 6 rows
        del processor.image_processor.preprocess
        reference = super(type(processor), processor).__call__(
            images=batch_images, text=batch_texts, padding=True, return_tensors=tensors
        )
        assert ours.keys() == reference.keys()
        for key in reference:
            assert np.array_equal(np.asarray(ours[key]), np.asarray(reference[key])), (tensors, key)


def test_shared_prefix_generate_left_padded_prompts(grounder_dir):
    """Prompts of two lengths (left padding: the decode steps keep the attention mask): greedy tokens equal
    transformers' generate."""
    from transformers import GenerationConfig

    from medloc_core.training.shared_prefix import shared_prefix_generate

    enc = _left_padded_prompts(grounder_dir, keep=0)
    order = torch.tensor([1, 0, 0, 1])
    rows = enc["image_grid_thw"][0].prod()
    batch = {k: enc[k][order] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
    batch["pixel_values"] = torch.cat(
        [enc["pixel_values"][i * rows : (i + 1) * rows] for i in order.tolist()]
    )
    model = loading.load_model(grounder_dir, dtype="float32")
    config = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=[1])
    ours = shared_prefix_generate(model, generation_config=config, **batch)
    assert ours is not None and torch.equal(ours, model.generate(**batch, generation_config=config))
