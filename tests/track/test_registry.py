"""Champion/challenger: the decision rule, and what the registry shows after real training runs."""

from __future__ import annotations

import numpy as np
import pytest

from alexnet.track.registry import CHALLENGER, CHAMPION, Champion, Evaluation, decide
from tests.support.mlflow_server import MlflowServer, train_args, train_cli, trained_sqlite

CENTRE_V1 = dict(dataset_version="v1", ten_crop=False)


def test_first_version_becomes_champion():
    d = decide(Evaluation("v1", False, 0.3), None)
    assert d.alias == CHAMPION and "no champion" in d.reason


@pytest.mark.parametrize("new, old, alias", [(0.6, 0.5, CHAMPION), (0.5, 0.5, CHALLENGER), (0.4, 0.5, CHALLENGER)])
def test_the_same_evaluation_compares_recorded_top1(new, old, alias):
    d = decide(Evaluation(top1=new, **CENTRE_V1), Champion("3", Evaluation(top1=old, **CENTRE_V1)))
    assert d.alias == alias
    assert d.champion_version == "3" and d.champion_top1 == old
    assert f"{new:.4f}" in d.reason and f"{old:.4f}" in d.reason and "same evaluation" in d.reason


@pytest.mark.fault("a champion scored on another dataset version, 10-crop vs centre-crop, an unknown"
                   " evaluation", inputs=3,
                   outcome="compared with its re-score, not its own number; one that cannot be re-scored "
                           "leaves the new one challenger")
@pytest.mark.parametrize("theirs", [Evaluation("old", False, 0.9), Evaluation("v1", True, 0.9), None],
                         ids=["other-dataset-version", "ten-crop-vs-centre-crop", "unknown-evaluation"])
def test_another_evaluation_uses_the_rescored_champion_not_its_own_number(theirs):
    champion = Champion("2", theirs)
    d = decide(Evaluation(top1=0.6, **CENTRE_V1), champion, rescored_top1=0.5)
    assert d.alias == CHAMPION and d.champion_top1 == 0.5 and "re-scored" in d.reason
    assert decide(Evaluation(top1=0.4, **CENTRE_V1), champion, rescored_top1=0.5).alias == CHALLENGER
    d = decide(Evaluation(top1=0.99, **CENTRE_V1), champion, rescored_top1=None, why_not="its classes differ")
    assert d.alias == CHALLENGER and "could not be re-scored" in d.reason and "its classes differ" in d.reason
    assert "alexnet promote" in d.reason


def test_evaluations_round_trip_through_version_tags():
    e = Evaluation("v1", True, 0.1 + 0.2, 0.9, 30)
    assert Evaluation.from_tags(e.tags()) == e  # exact: ties stay ties
    assert Evaluation.from_tags({"val_top1": "0.5", "dataset_version": "v1"}) is None  # recorded before eval.*


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def _new_versions(uri: str, name: str, n: int) -> list[str]:
    """n registered versions of `name` without aliases (logged models of one run; no files needed)."""
    from alexnet.track.registry import ensure_version
    from alexnet.track.tracking import using_store

    c = _client(uri)
    exp = c.create_experiment(f"{name}-exp")
    run_id = c.create_run(exp).info.run_id
    with using_store(uri):  # the registry looks models:/m-ID up in the process's tracking store
        return [ensure_version(c, name, f"models:/{c.create_logged_model(exp, 'model', run_id).model_id}", run_id)
                for _ in range(n)]


@pytest.fixture(scope="module")
def http_store(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("registry-server")).start()
    yield server.uri
    server.stop()


@pytest.mark.fault("two registrations moving the champion alias together (sqlite and http stores)", inputs=2,
                   outcome="serialised: the second compares with the first; the better is champion; the lock"
                           " released")
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "http"])
def test_two_registrations_racing_never_both_beat_the_same_champion(kind, tmp_path, request):
    """Two runs finish together; both re-score the old champion (on another dataset version) before
    either moves the alias (a barrier holds them there). The second to move it must compare with
    the first, not with the champion both started from, and the better one ends champion."""
    import threading

    from alexnet.track.registry import assign_alias, current_champion

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if kind == "sqlite" else request.getfixturevalue("http_store")
    old, a, b = _new_versions(uri, "race", 3)
    assign_alias(_client(uri), "race", old, Evaluation("old", False, 0.9))
    barrier = threading.Barrier(2, timeout=120)

    def rescore(version):
        barrier.wait()  # both have read the champion and are comparing with it
        return 0.5, ""

    decisions, errors = {}, []

    def register(version, top1):
        try:
            decisions[version] = assign_alias(_client(uri), "race", version, Evaluation("new", False, top1),
                                              rescore=rescore)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(a, 0.6)), threading.Thread(target=register, args=(b, 0.7))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert current_champion(_client(uri), "race").version == b  # the better one, whoever finished first
    compared = {decisions[a].champion_version, decisions[b].champion_version}
    assert compared != {old}, "both were compared with the old champion: the alias move was not serialised"
    first = a if decisions[b].champion_version == a else b
    assert decisions[first].champion_version == old and decisions[first].alias == CHAMPION
    assert not any(m.name.endswith(".alias-lock") for m in _client(uri).search_registered_models())  # released


def _held_lock(tmp_path, monkeypatch, owner: str):
    """A store whose model `m` has its alias lock held by `owner`; waiters give up after 1 s."""
    from alexnet.track import registry

    c = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    c.create_registered_model("m.alias-lock", tags={"owner": owner})
    monkeypatch.setattr(registry, "LOCK_WAIT_S", 1.0)
    return c


@pytest.mark.fault("an alias lock held by a killed process", inputs=1,
                   outcome="RegistryBusy naming the holder; once stale, broken and taken over")
def test_a_held_alias_lock_waits_then_fails_clearly_and_a_stale_one_is_broken(tmp_path, monkeypatch):
    from alexnet.track import registry

    c = _held_lock(tmp_path, monkeypatch, "host:1:killed")
    with pytest.raises(registry.RegistryBusy, match=r"m\.alias-lock is held by host:1:killed"):
        with registry.alias_lock(c, "m"):
            pass
    monkeypatch.setattr(registry, "LOCK_STALE_S", 0.0)  # as if it were held for longer than any alias move takes
    with registry.alias_lock(c, "m"):
        assert c.get_registered_model("m.alias-lock").tags["owner"] != "host:1:killed"
    assert not c.search_registered_models("name = 'm.alias-lock'")


@pytest.mark.fault("a live alias lock seen by a process whose clock runs an hour ahead of the store's", inputs=1,
                   outcome="the lock is not broken: RegistryBusy after the wait; its holder still owns it")
def test_a_waiter_with_a_skewed_clock_does_not_break_a_live_lock(tmp_path, monkeypatch):
    import time
    import types

    from alexnet.track import registry

    c = _held_lock(tmp_path, monkeypatch, "host:2:alive")
    # This module's clock an hour ahead; the store (MLflow's code) keeps the true one.
    clock = types.SimpleNamespace(time=lambda: time.time() + 3600, monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(registry, "time", clock)
    with pytest.raises(registry.RegistryBusy, match=r"held by host:2:alive \(for [0-9] s\)"):
        with registry.alias_lock(c, "m"):
            pass
    assert c.get_registered_model("m.alias-lock").tags["owner"] == "host:2:alive"


@pytest.mark.fault("a 10-crop version against a centre-crop champion on the same dataset", inputs=1,
                   outcome="the champion re-scored 10-crop by the same function; the alias follows that "
                           "number")
@pytest.mark.slow
def test_a_ten_crop_version_re_scores_a_centre_crop_champion_ten_crop(ray_local, shapes_dataset, tmp_path):
    """Same dataset version, different evaluation: the champion's recorded centre-crop number is not
    compared with a 10-crop one; the champion is re-scored 10-crop, by the same function."""
    import torch

    from alexnet.track import publish as pub
    from alexnet.serve.model_files import ModelSpec, build
    from alexnet.serve.predict import evaluate
    from alexnet.track.models import load_model
    from alexnet.run import rescorer
    from pipelines.dataset import open_dataset

    info = open_dataset(shapes_dataset)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = _client(uri)
    run_id = c.create_run(c.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())).info.run_id
    spec = ModelSpec("torchvision", 16, tuple(info.classes), tuple(info.pixel_mean), tuple(info.pixel_std), 64, 72)

    def publish(evaluation, rescore=None):
        torch.manual_seed(len(c.search_model_versions("name='alexnet'")))
        folder = pub.stage(build(spec), tmp_path / "models", name="r", run_id=run_id, register_as="alexnet",
                           evaluation=evaluation, dataset_path=str(shapes_dataset), tracking_uri=uri, step=0)
        return pub.publish(folder, uri, rescore=rescore)

    publish(Evaluation(info.version, False, 0.99))  # champion, recorded centre-crop
    expected = evaluate(load_model("models:/alexnet/1", uri), info, ten_crop=True)[0].top1
    assert expected < 0.99  # an untrained network: its 10-crop score is far below the recorded 0.99
    between = (expected + 0.99) / 2  # beats the re-score, not the recorded centre-crop number
    new = publish(Evaluation(info.version, True, between), rescore=rescorer(uri, "alexnet", info, ten_crop=True))
    mv = c.get_model_version("alexnet", new.version)
    assert float(mv.tags["decision.champion_val_top1"]) == expected  # not 0.99
    assert "re-scored with this version's evaluation (10-crop" in mv.tags["decision.reason"]
    assert new.alias == CHAMPION


@pytest.fixture(scope="module")
def trained(ray_local, shapes_dataset, tmp_path_factory):
    """The session's trained run, read-only here: its model "alexnet" keeps version 1 as champion.
    A test that moves aliases copies that version under its own model name (`_seeded`)."""
    return trained_sqlite(tmp_path_factory, shapes_dataset)


def _seeded(trained, name: str, top1: float | None = None) -> str:
    """`name`'s first version: the trained run's model, champion with the trained run's evaluation
    (or the same evaluation recording `top1`)."""
    import mlflow

    from alexnet.track.registry import assign_alias
    from alexnet.track.tracking import using_store

    client = _client(trained["uri"])
    ours = Evaluation.from_tags(client.get_model_version("alexnet", "1").tags)
    with using_store(trained["uri"]):
        version = str(mlflow.register_model("models:/alexnet/1", name).version)
    evaluation = ours if top1 is None else Evaluation(ours.dataset_version, ours.ten_crop, top1)
    assert assign_alias(client, name, version, evaluation).alias == CHAMPION
    return version


@pytest.mark.slow
def test_trained_model_is_registered_as_champion_with_its_numbers(trained):
    client = _client(trained["uri"])
    mv = client.get_model_version("alexnet", "1")
    assert mv.run_id == trained["run_id"]
    assert str(client.get_model_version_by_alias("alexnet", CHAMPION).version) == "1"
    run = client.get_run(trained["run_id"])
    top1 = {m.step: m.value for m in client.get_metric_history(trained["run_id"], "val/top1")}
    assert float(mv.tags["val_top1"]) == pytest.approx(max(top1[0], top1[1]), abs=1e-9)
    assert mv.tags["dataset_version"] == run.data.params["dataset.version"]
    assert mv.tags["decision.reason"] == "no champion yet"
    assert mv.description.startswith("champion: ")


@pytest.mark.slow
def test_worse_version_gets_challenger_and_promote_moves_champion(trained, capsys):
    import mlflow

    from alexnet.track.registry import assign_alias
    from alexnet.track.tracking import using_store
    from jobs.cli import main

    name = "alexnet-promote"
    client = _client(trained["uri"])
    champion = client.get_model_version(name, _seeded(trained, name))
    with using_store(trained["uri"]):
        worse = str(mlflow.register_model(f"models:/{name}/{champion.version}", name).version)
    theirs = Evaluation.from_tags(champion.tags)
    d = assign_alias(client, name, worse, Evaluation(theirs.dataset_version, theirs.ten_crop, theirs.top1 - 0.01))
    assert d.alias == CHALLENGER
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == str(champion.version)
    mv = client.get_model_version_by_alias(name, CHALLENGER)
    assert str(mv.version) == str(worse) and mv.tags["decision"] == CHALLENGER
    assert mv.tags["decision.champion_version"] == str(champion.version)
    assert float(mv.tags["decision.champion_val_top1"]) == pytest.approx(float(champion.tags["val_top1"]))
    assert "does not beat" in mv.description

    assert main(["promote", str(worse), "--name", name, "--workdir", str(trained["workdir"])]) == 0
    assert f"-> version {worse}" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == str(worse)
    assert "promoted by hand" in client.get_model_version(name, worse).tags["decision.reason"]


@pytest.mark.fault("`promote 7` of a model without version 7", inputs=1,
                   outcome="exit 2 naming the version")
def test_promote_unknown_version_is_a_user_error(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from jobs.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri, registry_uri=uri).create_registered_model("alexnet")
    assert main(["promote", "7", "--workdir", str(tmp_path)]) == 2
    assert "has no version '7'" in capsys.readouterr().err


@pytest.mark.fault("`promote` with a --workdir holding no store", inputs=1,
                   outcome="exit 2, 'no MLflow store'")
def test_store_options_need_an_existing_store(tmp_path, capsys):
    from jobs.cli import main

    assert main(["promote", "1", "--workdir", str(tmp_path / "nowhere")]) == 2
    assert "no MLflow store" in capsys.readouterr().err


@pytest.mark.slow
def test_a_training_run_that_does_not_beat_the_champion_is_registered_challenger(trained, capsys):
    """End to end through `alexnet train`: a 1-epoch run registers the next version of a model
    whose champion records val top-1 1.0 on the same evaluation, so it cannot strictly beat it:
    challenger, compared with the champion's own number, and the champion stays."""
    name = "alexnet-second"
    champion = _seeded(trained, name, top1=1.0)
    assert train_cli(train_args(trained["dataset"], trained["workdir"], "second-run", "--set", "optim.epochs=1",
                                "--set", f"run.register_as={name}")) == 0
    client = _client(trained["uri"])
    newest = max(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    assert newest.version != champion and np.isfinite(float(newest.tags["val_top1"]))
    assert float(newest.tags["decision.champion_val_top1"]) == 1.0
    assert newest.tags["decision"] == CHALLENGER
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == str(newest.version)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == champion
    assert f"model {name} v{newest.version}: {CHALLENGER}" in capsys.readouterr().out
