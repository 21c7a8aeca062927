"""``medloc evaluate`` on a registered version: the table its pipeline run evaluated is found without --data,
and every input a user can get wrong is a one-line error. Against a real ``mlflow server``."""

from __future__ import annotations

import pytest
from helpers import ANSWER_STYLE, g, prepared_frame

from medloc_core.registry import versions


@pytest.mark.slow
def test_evaluate_a_version_finds_the_table_its_run_evaluated(
    server_env, answering_model_dir, tmp_path, capsys
):  # noqa: F811
    import mlflow

    from medloc_core import cli

    df = prepared_frame(tmp_path)
    with mlflow.start_run() as run:  # what the evaluate step logs into the pipeline run
        df.to_parquet(tmp_path / "eval_set.parquet")
        mlflow.log_artifact(str(tmp_path / "eval_set.parquet"), artifact_path="evaluation")
    version = versions.log_and_register(
        answering_model_dir, g(50.0), run_id=run.info.run_id, eval_set_hash="he", answer_style=ANSWER_STYLE
    )
    code = cli.main(
        ["evaluate", "--model", f"models:/{versions.MODEL_NAME}/{version}", "--max-new-tokens", "40", "--n-boot", "0"]
    )  # fmt: skip
    assert code == 0 and "66.67" in capsys.readouterr().out  # the answering model on prepared_frame's rows

    # one-line errors: a version that does not exist, a run without the table, a --data that is no table
    garbage = tmp_path / "prepared"
    garbage.write_bytes(b"\x80\x04\x95 not a parquet file")
    cases = {
        f"models:/{versions.MODEL_NAME}/99": ("no such registered model version", None),
        answering_model_dir: ("a local model folder has no pipeline run", None),
        "0123456789abcdef": ("has no evaluation/eval_set.parquet", None),  # a run id that does not exist
        f"models:/{versions.MODEL_NAME}/{version}": (
            "is not a parquet table of prepared records",
            str(garbage),
        ),
    }
    for model, (message, data) in cases.items():
        args = ["evaluate", "--model", model] + (["--data", data] if data else [])
        assert cli.main(args) == 2, model
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
