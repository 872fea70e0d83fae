"""The typed config: recipes, overrides, and errors that name the valid choices."""

from __future__ import annotations

import pytest

from alexnet.config import flatten, load_config, to_yaml
from pipelines.errors import UserError


def test_paper_recipe_is_the_papers_hyperparameters():
    cfg = load_config("paper")
    assert (cfg.optim.optimizer, cfg.optim.batch_size, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 128, 0.9, 5e-4)
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.epochs, cfg.model.dropout) == (0.01, "plateau", 90, 0.5)
    assert cfg.model.arch == "paper" and cfg.data.ten_crop_eval and cfg.data.pca_lighting == 0.1


def test_torchvision_recipe_matches_references_classification():
    cfg = load_config("torchvision")
    assert (cfg.optim.batch_size, cfg.run.num_workers, cfg.optim.weight_decay) == (256, 8, 1e-4)
    assert cfg.optim.schedule == "step" and cfg.optim.step_size == 30 and cfg.data.random_resized_crop
    assert cfg.optim.lr * cfg.optim.batch_size / 128 == pytest.approx(0.01)  # torchvision's lr at batch 256


def test_overrides_are_typed_and_win_over_the_recipe():
    cfg = load_config("smoke", ["optim.lr=0.5", "optim.epochs=7", "data.flip=false", "run.use_gpu=FALSE"])
    assert cfg.optim.lr == 0.5 and cfg.optim.epochs == 7 and cfg.data.flip is False and cfg.run.use_gpu == "false"
    assert flatten(cfg)["optim.lr"] == 0.5 and "optim: " not in to_yaml(cfg).splitlines()[0]


@pytest.mark.fault("bad overrides: unknown key or section, bad choices, bad numbers, non-boolean, no"
                   " section", inputs=11,
                   outcome="UserError naming the key and the choices")
@pytest.mark.parametrize("overrides, needles", [
    (["optim.lrr=1"], ["optim.lrr", "lr", "momentum"]),
    (["optimizer.lr=1"], ["optimizer", "data", "model", "optim", "run"]),
    (["optim.schedule=linear"], ["linear", "plateau", "step", "cosine", "constant"]),
    (["optim.optimizer=rmsprop"], ["rmsprop", "sgd", "adamw"]),
    (["run.num_workers=0"], ["run.num_workers=0"]),
    (["run.num_workers=-2"], ["run.num_workers=-2"]),
    (["optim.batch_size=30", "run.num_workers=4"], ["batch_size=30", "num_workers=4"]),
    (["data.flip=maybe"], ["data.flip", "true or false"]),
    (["optim.epochs=ten"], ["optim.epochs", "int"]),
    (["optim.label_smoothing=1.5"], ["label_smoothing"]),
    (["lr=1"], ["section.key=value"]),
])
def test_bad_values_name_the_key_and_the_choices(overrides, needles):
    with pytest.raises(UserError) as err:
        load_config("smoke", overrides)
    for needle in needles:
        assert needle in str(err.value)


@pytest.mark.fault("an unknown recipe; a recipe file whose section is a list", inputs=2,
                   outcome="UserError listing the shipped recipes; one saying it must be a mapping")
def test_unknown_recipe_lists_the_shipped_ones(tmp_path):
    with pytest.raises(UserError, match="demo, paper, smoke, torchvision"):
        load_config("imagenet-fast")
    bad = tmp_path / "r.yaml"
    bad.write_text("optim: [1, 2]\n")
    with pytest.raises(UserError, match="must be a mapping"):
        load_config(str(bad))


def test_the_configuration_page_lists_every_key_as_the_code_has_it():
    from tests.support import config_reference

    page = config_reference.PAGE.read_text() if config_reference.PAGE.is_file() else ""
    assert page == config_reference.render(), "docs/config.md is out of date: run `.venv/bin/python -m tests.support.config_reference`"
    import dataclasses
    import typing

    from alexnet.config import Config

    for section, cls in typing.get_type_hints(Config).items():
        for f in dataclasses.fields(cls):
            assert config_reference.comments(cls).get(f.name), f"{section}.{f.name} has no comment saying what it is"
