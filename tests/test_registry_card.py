"""The model card on a registered version: written after the gate's decision, kept when the gate decides again.
Against a real ``mlflow server``."""

from __future__ import annotations

import pytest
from helpers import g, m

from medloc_core.registry import versions
from medloc_core.registry.card import CARD_HEADING, MODEL_DESCRIPTION, model_card, write_model_card
from medloc_core.registry.promote import promote_if_better


def _card() -> str:
    training = {
        "steps": 300,
        "seconds_per_step": 0.5,
        "final_threshold": 0.5,
        "tau_raises": [[28, 0.2, 0.35]],
    }
    manifest = {"counts": {"records": 10, "by_split": {"train": 7}, "by_dataset": {"ham10000": {"train": 7}}}}
    return model_card(
        training=training, metrics=g(60.0), base_metrics=m(50.0), manifest=manifest,
        recipe={"schedule": "medloc"}, run_id="abc",
    )  # fmt: skip


def test_the_card_names_recipe_data_trace_metrics_and_limits():
    card = _card()
    assert card.startswith(CARD_HEADING)
    for part in ("- schedule: medloc", "- ham10000: train 7", "τ 0.20 → 0.35 (after step 28)", "A@0.5 60 vs 50: +10 [+2, +18]",
                 "Not a medical device", "Pipeline run (MLflow): abc"):  # fmt: skip
        assert part in card, part


@pytest.mark.slow
def test_a_new_gate_decision_keeps_the_card(server_env, answering_model_dir):
    client = server_env
    first = versions.log_and_register(answering_model_dir, g(60.0), eval_set_hash="c", base_metrics=m(50.0))
    assert promote_if_better(first, client=client).promote
    version = versions.log_and_register(answering_model_dir, g(60.0), eval_set_hash="c", base_metrics=m(50.0))
    write_model_card(client, versions.MODEL_NAME, version, _card())
    for force, verdict in ((False, "rejected"), (True, "promoted (forced)")):  # the gate decides again
        promote_if_better(version, client=client, margin=100.0, force=force)
        text = client.get_model_version(versions.MODEL_NAME, str(version)).description
        assert text.startswith(f"Promotion gate: {verdict}") and text.count(CARD_HEADING) == 1, text
        assert _card() in text
    assert client.get_registered_model(versions.MODEL_NAME).description == MODEL_DESCRIPTION
