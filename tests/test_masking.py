"""Secret-looking variables of a run config: deferred past ZenML, revealed where used, masked where recorded."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from medloc_core import masking

ENV = {
    "HUB_TOKEN": "hf_abcdef123",
    "DB_PASSWORD": "pw-42-xyz",
    "TEAM": "radiology",
    "MEDLOC_SECRET_VARS": "SITE",
}


@pytest.mark.parametrize(
    "name,secret",
    [("HUB_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True), ("db_password", True), ("api_key", True),
     ("SITE", True), ("TEAM", False), ("MEDLOC_HOME", False)],
)  # fmt: skip
def test_which_names_are_secret(name: str, secret: bool) -> None:
    assert masking.is_secret_name(name, ENV) is secret


def test_defer_keeps_other_placeholders_for_zenml_and_reveal_restores_the_value() -> None:
    parameters = {
        "data": {"root": "${MEDLOC_HOME}/data/${HUB_TOKEN}"},
        "urls": ["https://u:${DB_PASSWORD}@h/${TEAM}"],
    }
    deferred = masking.defer(parameters, ENV)
    assert deferred == {
        "data": {"root": "${MEDLOC_HOME}/data/${secret:HUB_TOKEN}"},
        "urls": ["https://u:${secret:DB_PASSWORD}@h/${TEAM}"],
    }
    assert masking.deferred_names({"a": [deferred]}) == {"HUB_TOKEN", "DB_PASSWORD"}
    assert masking.reveal({"r": ["${secret:HUB_TOKEN}/x"]}, ENV) == {"r": ["hf_abcdef123/x"]}
    with pytest.raises(KeyError, match="NOT_SET_TOKEN"):
        masking.reveal("${secret:NOT_SET_TOKEN}", ENV)


def test_mask_replaces_values_in_keys_values_and_frames_and_round_trips_through_reveal() -> None:
    names = {"HUB_TOKEN", "DB_PASSWORD"}
    report = {"/d/hf_abcdef123/a.png": ["pw-42-xyz", 3], "plain": "radiology"}
    masked = masking.mask(report, names, ENV)
    assert masked == {"/d/${secret:HUB_TOKEN}/a.png": ["${secret:DB_PASSWORD}", 3], "plain": "radiology"}
    frame = pd.DataFrame({"image_path": ["/d/hf_abcdef123/a.png"], "x1": [1.0]})
    out = masking.mask(frame, names, ENV)
    assert out["image_path"].tolist() == ["/d/${secret:HUB_TOKEN}/a.png"] and out["x1"].tolist() == [1.0]
    assert masking.reveal(out["image_path"][0], ENV) == "/d/hf_abcdef123/a.png"
    assert masking.mask("abc", {"SHORT_TOKEN"}, {"SHORT_TOKEN": "abc"}) == "abc"  # too short to mask safely


def test_log_records_inside_the_block_are_masked(caplog) -> None:
    logger = logging.getLogger("medloc_core.test_masking")
    caplog.set_level(logging.INFO)
    logging.getLogger().addHandler(caplog.handler)
    try:
        with masking.masked_logs({"HUB_TOKEN"}, ENV):
            logger.info("generating into %s", "/d/hf_abcdef123")
    finally:
        logging.getLogger().removeHandler(caplog.handler)
    assert "hf_abcdef123" not in caplog.text and "${secret:HUB_TOKEN}" in caplog.text
