"""Dynamic sampling's tensor side (training/dynamic_sampling.py): which groups are live, which extra prompts a draw
takes, and how scored draws of different widths merge into one batch where no zero-spread group reaches the loss.
The trainer end to end (a spy on the loss, resume, accelerate launch) is in test_training_run.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from medloc_core.training import dynamic_sampling as ds  # noqa: E402

PAD = 99


def scored_draw(advantages: list[float], prompt_len: int, completion_len: int, tag: int) -> dict:
    """A fake of TRL's per-rank output after ``split_pixel_values_by_grid``: ``tag`` marks every value of the
    draw, rows are numbered in the completion ids, pixel rows per sample."""
    n = len(advantages)
    prompt_ids = torch.full((n, prompt_len), tag)
    prompt_ids[:, 0] = PAD  # left padding
    completion_ids = torch.arange(n).unsqueeze(1).repeat(1, completion_len) + 100 * tag
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": (prompt_ids != PAD).long(),
        "completion_ids": completion_ids,
        "completion_mask": torch.ones(n, completion_len, dtype=torch.long),
        "advantages": torch.tensor(advantages),
        "old_per_token_logps": torch.full((n, completion_len), -float(tag)),
        "mm_token_type_ids": torch.cat(
            [torch.full((n, prompt_len), tag), torch.zeros(n, completion_len, dtype=torch.long)], dim=1
        ),
        "pixel_values": [torch.full((4, 3), float(tag * 10 + i)) for i in range(n)],
        "image_grid_thw": [torch.tensor([[1, 2, 2]]) for _ in range(n)],
        "num_images": [1] * n,
        "num_items_in_batch": torch.tensor(n * completion_len),
    }


def test_a_group_is_live_when_any_advantage_is_nonzero() -> None:
    adv = torch.tensor([0.0, 1e-12, -1e-12, 0.0, 0.7, -0.7, 0.0, 0.0])
    assert ds.live_groups(adv, 2).tolist() == [False, False, True, False]
    assert ds.live_groups(adv, 4).tolist() == [False, True]


def test_extra_prompts_are_distinct_and_a_function_of_seed_step_draw_and_rank() -> None:
    picks = ds.extra_prompt_indices(50, 8, seed=0, step=3, draw=1, rank=0)
    assert len(set(picks)) == 8 and all(0 <= i < 50 for i in picks)
    assert picks == ds.extra_prompt_indices(50, 8, seed=0, step=3, draw=1, rank=0)  # a resume draws the same
    others = [
        ds.extra_prompt_indices(50, 8, seed=0, step=4, draw=1, rank=0),
        ds.extra_prompt_indices(50, 8, seed=0, step=3, draw=2, rank=0),
        ds.extra_prompt_indices(50, 8, seed=0, step=3, draw=1, rank=1),
    ]
    assert all(o != picks for o in others)
    assert sorted(ds.extra_prompt_indices(3, 8, seed=0, step=0, draw=1, rank=0)) == [0, 1, 2]


def test_live_groups_from_later_draws_replace_dead_ones_with_widths_aligned() -> None:
    g = 2
    first = scored_draw(
        [0.0, 0.0, 0.5, -0.5, 0.0, 0.0], prompt_len=3, completion_len=4, tag=1
    )  # dead, live, dead
    second = scored_draw(
        [0.3, -0.3, 0.0, 0.0, 0.0, 0.0], prompt_len=5, completion_len=2, tag=2
    )  # live, dead, dead
    live = [ds.live_groups(d["advantages"], g) for d in (first, second)]
    batch, stats = ds.fill_batch([first, second], live, g, 3, PAD)

    assert stats == {"live_groups": 2 / 3, "masked_groups": 1 / 3}
    # draw order: draw 1's live group, draw 2's live group, then draw 1's first dead group, masked
    assert batch["completion_ids"][:, 0].tolist() == [102, 103, 200, 201, 100, 101]
    assert batch["prompt_ids"].shape == (6, 5) and batch["completion_ids"].shape == (6, 4)
    assert batch["prompt_ids"][0].tolist() == [PAD, PAD, PAD, 1, 1]  # left-padded to the widest prompt
    assert batch["prompt_mask"][0].tolist() == [0, 0, 0, 1, 1]
    assert batch["completion_ids"][2].tolist() == [
        200,
        200,
        PAD,
        PAD,
    ]  # right-padded to the widest completion
    assert batch["completion_mask"][2].tolist() == [1, 1, 0, 0]
    assert batch["old_per_token_logps"][2].tolist() == [-2.0, -2.0, 0.0, 0.0]
    # prompt part left-aligned with the prompt ids, completion part with the completion ids
    assert batch["mm_token_type_ids"].shape == (6, 9)
    assert batch["mm_token_type_ids"][0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert batch["mm_token_type_ids"][2].tolist() == [2] * 5 + [0] * 4
    assert [p[0, 0].item() for p in batch["pixel_values"]] == [12.0, 13.0, 20.0, 21.0, 10.0, 11.0]
    assert len(batch["image_grid_thw"]) == 6 and batch["num_images"] == [1] * 6
    assert "num_items_in_batch" not in batch  # the caller recomputes it across ranks

    # no zero-spread group reaches the loss: every group is live or has no loss tokens and no advantage
    adv = batch["advantages"].view(-1, g)
    tokens = batch["completion_mask"].view(-1, g, 4).sum(dim=(1, 2))
    for group in range(3):
        assert bool(adv[group].abs().max() > ds.ZERO_ADVANTAGE) != (tokens[group] == 0)
    assert tokens.tolist() == [8, 4, 0]


def test_a_batch_with_too_few_live_groups_anywhere_keeps_its_shape() -> None:
    dead = scored_draw([0.0] * 4, prompt_len=3, completion_len=4, tag=1)
    batch, stats = ds.fill_batch([dead, dead], [ds.live_groups(dead["advantages"], 2)] * 2, 2, 2, PAD)
    assert stats == {"live_groups": 0.0, "masked_groups": 1.0}
    assert batch["completion_ids"].shape == (4, 4) and int(batch["completion_mask"].sum()) == 0


def test_an_unknown_batch_field_is_refused_by_name() -> None:
    draw = scored_draw([0.0, 0.0, 1.0, -1.0], prompt_len=2, completion_len=2, tag=1)
    draw["some_new_trl_field"] = torch.zeros(4)
    with pytest.raises(ValueError, match="some_new_trl_field"):
        ds.fill_batch([draw], [ds.live_groups(draw["advantages"], 2)], 2, 2, PAD)
