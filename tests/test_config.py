"""The typed run config: one model per block, strict keys named by path, defaults from their one home."""

from __future__ import annotations

import pytest
import yaml

from medloc_core import run_config
from medloc_core.curriculum.config import CurriculumConfig
from medloc_core.training.config import TrainingConfig


@pytest.mark.parametrize(
    "blocks,named",
    [
        ({"training": {"curriculum": {"tau_0": 0.3}}}, "training.curriculum.tau_0: unknown key"),
        ({"training": {"learning_rat": 1e-4}}, "training.learning_rat: unknown key"),
        ({"training": {"accelerate": {"num_procs": 2}}}, "training.accelerate.num_procs: unknown key"),
        ({"evaluation": {"batchsize": 4}}, "evaluation.batchsize: unknown key"),
        ({"evaluation": {"split": "holdout"}}, "evaluation.split"),
        ({"registration": {"margin": "a lot"}}, "registration.margin"),
        ({"preprocessing": {"answer_stile": "answer"}}, "preprocessing.answer_stile: unknown key"),
        ({"data": {"sources": [{"format": "dicom-ish", "root": "x"}]}}, "data.sources.0.format"),
        # reader options and synthetic-data keys are passed on as keyword arguments: checked by name too
        (
            {"data": {"sources": [{"format": "ham10000", "root": "x", "options": {"mask_mod": "union"}}]}},
            "options.mask_mod: not an option of the ham10000 reader",
        ),
        (
            {"data": {"sources": [{"format": "tn3k", "root": "x", "synth": {"kind": "tn3k", "nn": 5}}]}},
            "synth.nn: unknown key",
        ),
        # a cross-field rule of the dataclass fires at parse time too
        (
            {"training": {"num_generations": 3, "per_device_train_batch_size": 8}},
            "multiple of num_generations",
        ),
        ({"training": {"schedule": "fixed", "curriculum": {"tau0": 0.25}}}, "only applies to schedule"),
        ({"trainng": {}}, "trainng: unknown parameter block"),
    ],
)
def test_a_bad_key_or_value_is_named_by_its_path(blocks: dict, named: str) -> None:
    with pytest.raises(run_config.ConfigError, match=named.replace(".", r"\.")):
        run_config.validate_parameters(**blocks)


def test_the_training_block_is_the_training_config() -> None:
    parsed = run_config.validate_parameters(training={"curriculum": {"window": 10}})
    assert type(parsed["training"]) is TrainingConfig  # the object that runs, not a copy of its fields
    assert type(parsed["training"].curriculum) is CurriculumConfig
    assert parsed["training"].curriculum.window == 10
    assert parsed["training"].curriculum.tau0 == CurriculumConfig().tau0


def test_yaml_numbers_are_read_as_numbers_and_survive_a_round_trip() -> None:
    raw = yaml.safe_load("learning_rate: 1e-6\ncurriculum: {tau0: 0.2, window: 10}\n")
    assert raw["learning_rate"] == "1e-6"  # PyYAML reads this as a string
    config = TrainingConfig.model_validate(raw)
    assert config.learning_rate == 1e-6
    # ZenML hands a step the block as a full JSON dump, as `accelerate launch` children read it
    again = TrainingConfig.model_validate_json(config.model_dump_json())
    assert again == config and again.curriculum.window == 10


def test_an_empty_curriculum_block_is_no_block_for_any_schedule() -> None:
    config = TrainingConfig.model_validate({"schedule": "fixed", "curriculum": {}})
    assert TrainingConfig.model_validate(config.model_dump()).schedule == "fixed"  # its full dump too


def test_settings_shared_with_the_preprocessing_must_agree() -> None:
    parsed = run_config.validate_parameters(
        preprocessing={"answer_style": "answer", "max_pixels": 12544, "min_pixels": 3136},
        training={"answer_style": "answer"},  # stating the same value is allowed
    )
    assert parsed["training"].answer_style == "answer"
    with pytest.raises(run_config.ConfigError, match=r"training\.max_pixels: .* differs from preprocessing"):
        run_config.validate_parameters(
            preprocessing={"max_pixels": 12544, "min_pixels": 3136},
            training={"max_pixels": 50176, "min_pixels": 3136},
        )


def test_preprocessing_block_is_preprocess_signature() -> None:
    import inspect

    from medloc_core.data.preprocess import preprocess

    defaults = {
        name: p.default
        for name, p in inspect.signature(preprocess).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert run_config.preprocess_kwargs(run_config.PreprocessingConfig()) == {
        k: tuple(v) if isinstance(v, list) else v for k, v in defaults.items()
    }


def test_every_shipped_recipe_parses(monkeypatch, tmp_path) -> None:
    from pathlib import Path

    # the own-data smoke config takes its source from two variables, as a user sets them
    monkeypatch.setenv("MEDLOC_HOME", str(tmp_path))
    monkeypatch.setenv("MEDLOC_DATA_FORMAT", "tn3k")
    monkeypatch.setenv("MEDLOC_DATA_ROOT", "/data/TN3K")
    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(paths) == 5, paths
    for path in paths:
        parsed = run_config.load_run_config(path)  # ${VAR} substituted, as for a run
        assert set(parsed) == set(run_config.BLOCKS), path
