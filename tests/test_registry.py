"""Champion/challenger: the decision rule, and what the registry shows after real training runs."""

from __future__ import annotations

import numpy as np
import pytest

from alexnet.registry import CHALLENGER, CHAMPION, decide
from tests.mlflow_helpers import train_args, train_cli, trained_sqlite


def test_first_version_becomes_champion():
    d = decide(0.3, "v1", None)
    assert d.alias == CHAMPION and "no champion" in d.reason


@pytest.mark.parametrize("new, old, alias", [(0.6, 0.5, CHAMPION), (0.5, 0.5, CHALLENGER), (0.4, 0.5, CHALLENGER)])
def test_same_dataset_version_compares_recorded_top1(new, old, alias):
    d = decide(new, "v1", {"version": "3", "val_top1": old, "dataset_version": "v1"})
    assert d.alias == alias
    assert d.champion_version == "3" and d.champion_top1 == old
    assert f"{new:.4f}" in d.reason and f"{old:.4f}" in d.reason and "same dataset version" in d.reason


def test_other_dataset_version_uses_the_rescored_champion_not_its_old_number():
    champion = {"version": "2", "val_top1": 0.9, "dataset_version": "old"}
    d = decide(0.6, "new", champion, rescored_top1=0.5)
    assert d.alias == CHAMPION and d.champion_top1 == 0.5 and "re-scored" in d.reason
    assert decide(0.4, "new", champion, rescored_top1=0.5).alias == CHALLENGER


def test_other_dataset_version_without_rescore_is_challenger():
    d = decide(0.99, "new", {"version": "2", "val_top1": 0.1, "dataset_version": "old"}, rescored_top1=None)
    assert d.alias == CHALLENGER and "could not be re-scored" in d.reason and "alexnet promote" in d.reason


@pytest.fixture(scope="module")
def trained(ray_local, shapes_dataset, tmp_path_factory):
    return trained_sqlite(tmp_path_factory, shapes_dataset)


@pytest.mark.slow
def test_trained_model_is_registered_as_champion_with_its_numbers(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained["uri"], registry_uri=trained["uri"])
    mv = client.get_model_version("alexnet", "1")  # other tests may add versions and move the alias later
    assert mv.run_id == trained["run_id"]
    run = client.get_run(trained["run_id"])
    top1 = {m.step: m.value for m in client.get_metric_history(trained["run_id"], "val/top1")}
    assert float(mv.tags["val_top1"]) == pytest.approx(max(top1[0], top1[1]), abs=1e-9)
    assert mv.tags["dataset_version"] == run.data.params["dataset.version"]
    assert mv.tags["decision.reason"] == "no champion yet" or mv.tags["decision.reason"].startswith("promoted by hand")
    assert mv.description.startswith("champion: ")


@pytest.mark.slow
def test_worse_version_gets_challenger_and_promote_moves_champion(trained, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from alexnet.registry import assign_alias
    from jobs.cli import main
    from alexnet.tracking import using_store

    client = MlflowClient(trained["uri"], registry_uri=trained["uri"])
    champion = client.get_model_version_by_alias("alexnet", CHAMPION)
    with using_store(trained["uri"]):
        worse = str(mlflow.register_model(f"models:/alexnet/{champion.version}", "alexnet").version)
    d = assign_alias(client, "alexnet", worse, val_top1=float(champion.tags["val_top1"]) - 0.01,
                     dataset_version=champion.tags["dataset_version"])
    assert d.alias == CHALLENGER
    assert str(client.get_model_version_by_alias("alexnet", CHAMPION).version) == str(champion.version)
    mv = client.get_model_version_by_alias("alexnet", CHALLENGER)
    assert str(mv.version) == str(worse) and mv.tags["decision"] == CHALLENGER
    assert mv.tags["decision.champion_version"] == str(champion.version)
    assert float(mv.tags["decision.champion_val_top1"]) == pytest.approx(float(champion.tags["val_top1"]))
    assert "does not beat" in mv.description

    assert main(["promote", str(worse), "--workdir", str(trained["workdir"])]) == 0
    assert f"-> version {worse}" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias("alexnet", CHAMPION).version) == str(worse)
    assert "promoted by hand" in client.get_model_version("alexnet", worse).tags["decision.reason"]
    # Back as it was, for the other tests of this session.
    assert main(["promote", str(champion.version), "--workdir", str(trained["workdir"])]) == 0


def test_promote_unknown_version_is_a_user_error(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from jobs.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri, registry_uri=uri).create_registered_model("alexnet")
    assert main(["promote", "7", "--workdir", str(tmp_path)]) == 2
    assert "has no version '7'" in capsys.readouterr().err


def test_store_options_need_an_existing_store(tmp_path, capsys):
    from jobs.cli import main

    assert main(["promote", "1", "--workdir", str(tmp_path / "nowhere")]) == 2
    assert "no MLflow store" in capsys.readouterr().err


@pytest.mark.slow
def test_second_training_run_gets_the_alias_its_numbers_earn(trained, tmp_path_factory, capsys):
    """End to end through `alexnet train`: a 1-epoch run at a tiny learning rate registers v(n+1)
    and takes champion only if its val top-1 strictly beats the champion's."""
    from mlflow.tracking import MlflowClient

    from jobs.cli import main

    client = MlflowClient(trained["uri"], registry_uri=trained["uri"])
    before = client.get_model_version_by_alias("alexnet", CHAMPION)
    assert train_cli(train_args(trained["dataset"], trained["workdir"], "second-run",
                           "--set", "optim.epochs=1", "--set", "optim.lr=1e-9")) == 0
    newest = max(client.search_model_versions("name='alexnet'"), key=lambda v: int(v.version))
    mine = float(newest.tags["val_top1"])
    theirs = float(newest.tags["decision.champion_val_top1"])
    if newest.tags.get("dataset_version") == before.tags.get("dataset_version"):
        assert theirs == pytest.approx(float(before.tags["val_top1"]))  # compared with the champion's own number
    expected = CHAMPION if mine > theirs else CHALLENGER
    assert newest.tags["decision"] == expected
    assert str(client.get_model_version_by_alias("alexnet", expected).version) == str(newest.version)
    assert f"model alexnet v{newest.version}: {expected}" in capsys.readouterr().out
    if expected == CHAMPION:  # restore the first run as champion for the other tests
        assert main(["promote", str(before.version), "--workdir", str(trained["workdir"])]) == 0
    assert np.isfinite(mine)
