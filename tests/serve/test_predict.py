"""`alexnet predict` and `alexnet evaluate` with the registered champion of a real training run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from pipelines.dataset import open_dataset
from tests.support.mlflow_server import trained_sqlite
from tests.support import png_header_only

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(ray_local, shapes_dataset, tmp_path_factory):
    return trained_sqlite(tmp_path_factory, shapes_dataset)


def test_predict_dataset_writes_topk_parquet_that_matches_the_model(trained, tmp_path, capsys):
    import torch

    from alexnet.track.models import load_model
    from pipelines.read.augment import ValPreset

    out = tmp_path / "preds"
    assert main(["predict", "--model", "models:/alexnet@champion", "--data", str(trained["dataset"]), "--split", "val",
                 "--out", str(out), "--top-k", "3", "--workdir", str(trained["workdir"])]) == 0
    printed = capsys.readouterr().out
    info = open_dataset(trained["dataset"])
    table = pq.read_table(out).to_pandas()
    assert len(table) == info.split_size("val")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    assert set(table.columns) >= {"id", "source", "label", "label_name", "pred", "pred_name", "prob", "topk",
                                  "topk_names", "topk_probs", "error"}
    for _, row in table.iterrows():
        assert len(row.topk) == 3 and list(row.topk_probs) == sorted(row.topk_probs, reverse=True)
        assert row.pred == row.topk[0] and row.pred_name == info.classes[row.pred] == row.topk_names[0]
        assert row.label_name == info.classes[row.label]
    top1 = float(np.mean(table.pred == table.label))
    assert f"top-1 {top1:.4f}" in printed

    # The same images through the model by hand: same predictions (predict preprocesses like val).
    model = load_model("models:/alexnet@champion", trained["uri"])
    assert (model.crop, model.resize) == (64, 72)
    shard = pq.read_table(info.shard_paths("val")[0], columns=["id", "image", "label"]).to_pydict()
    crops = ValPreset(crop=64, resize=72)({"image": shard["image"][:8], "label": shard["label"][:8]})["image"]
    with torch.no_grad():
        expected = model(torch.from_numpy(crops)).argmax(1).numpy()
    by_id = dict(zip(table.id, table.pred))
    assert [by_id[i] for i in shard["id"][:8]] == list(expected)


@pytest.mark.fault("unreadable files among the images to predict: not a JPEG, a decompression bomb", inputs=2,
                   outcome="one row each with its error; the 6 readable images predicted; the run completes")
def test_predict_image_folder_labels_from_folder_names_and_flags_bad_files(trained, shapes_source, tmp_path, capsys):
    folder = tmp_path / "incoming"
    for cls in ("circle", "square"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((shapes_source / cls).iterdir())[:3]:
            shutil.copy(f, folder / cls / f.name)
    (folder / "unsorted").mkdir()
    (folder / "unsorted" / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "unsorted" / "bomb.png").write_bytes(png_header_only(40000, 40000))  # 4.8 GB once decoded
    out = tmp_path / "out"
    assert main(["predict", "--data", str(folder), "--out", str(out), "--workdir", str(trained["workdir"])]) == 0
    table = pq.read_table(out).to_pandas().set_index("source")
    assert len(table) == 8
    broken = table.loc[str(folder / "unsorted" / "broken.jpg")]
    assert broken.error and broken.pred == -1 and np.isnan(broken.label)
    assert table.loc[str(folder / "unsorted" / "bomb.png")].error.startswith("too large")
    assert set(table.label_name.dropna()) == {"circle", "square"}
    assert "2 unreadable images" in capsys.readouterr().out


@pytest.mark.fault("--out naming a non-empty folder", inputs=1,
                   outcome="exit 2 naming --out; the folder's file untouched")
def test_predict_refuses_a_non_empty_output(trained, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["predict", "--data", str(trained["dataset"]), "--out", str(tmp_path / "out"),
                 "--workdir", str(trained["workdir"])]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.fault("--model naming an alias nobody holds", inputs=1,
                   outcome="exit 2 naming the model URI")
def test_predict_unknown_model_is_a_user_error(trained, tmp_path, capsys):
    assert main(["predict", "--model", "models:/alexnet@nobody", "--data", str(trained["dataset"]),
                 "--out", str(tmp_path / "o"), "--workdir", str(trained["workdir"])]) == 2
    assert "models:/alexnet@nobody" in capsys.readouterr().err


def test_evaluate_prints_eval_line_and_logs_an_evaluation_run(trained, capsys):
    from mlflow.tracking import MlflowClient

    metric_file = trained["workdir"] / "metrics" / "champion.json"
    assert main(["evaluate", "--data", str(trained["dataset"]), "--workdir", str(trained["workdir"]),
                 "--metric-file", str(metric_file)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("EVAL ")
    result = json.loads(last[5:])
    client = MlflowClient(trained["uri"], registry_uri=trained["uri"])
    champion = client.get_model_version_by_alias("alexnet", "champion")
    info = open_dataset(trained["dataset"])
    assert result["images"] == info.split_size("val")
    # Same model, same val crops as the training loop's evaluation (one prediction may flip on float noise).
    assert abs(result["top1"] - float(champion.tags["val_top1"])) <= 1.0 / result["images"] + 1e-9
    assert result["top1"] <= result["top5"] <= 1.0
    run = client.get_run(result["run_id"])
    assert run.data.tags["evaluation"] == "true" and run.info.status == "FINISHED"
    assert run.data.metrics["eval/top1"] == pytest.approx(result["top1"])
    # The file a schedule's metric-below trigger reads (jobs.schedule_state.read_metric).
    from jobs import schedule as sch
    from jobs.schedule_state import read_metric

    schedule = sch.parse_schedule({"name": "drift", "cron": "0 6 * * *", "job": {"command": "train", "recipe": "paper", "data": "/d"},
                                   "trigger": {"kind": "metric-below", "metric_file": str(metric_file),
                                               "metric": "val/top1", "threshold": 2.0}}, "test")
    value, why = read_metric(schedule, sch.ScheduleState())
    assert value == pytest.approx(result["top1"]), why
    assert json.loads(metric_file.read_text())["metrics"]["val/top1"] == pytest.approx(result["top1"])


def test_evaluate_ten_crop(trained, capsys):
    assert main(["evaluate", "--data", str(trained["dataset"]), "--ten-crop", "--no-log",
                 "--workdir", str(trained["workdir"])]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1][5:])
    assert result["ten_crop"] is True and 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert "run_id" not in result


@pytest.mark.parametrize("ten_crop", [False, True], ids=["centre", "ten-crop"])
def test_a_small_split_scored_in_the_driver_matches_ray_datas_actor_pool(trained, ten_crop, monkeypatch):
    """Small val splits skip the Ray Data execution; both ways must give the same numbers."""
    from alexnet.serve import predict
    from alexnet.track.models import load_model

    model = load_model("models:/alexnet@champion", trained["uri"])
    info = open_dataset(trained["dataset"])
    assert predict._small(info.split_size("val"), model.spec.crop, ten_crop)
    here = predict.evaluate(model, info, ten_crop=ten_crop)
    monkeypatch.setattr(predict, "LOCAL_SCORING_MAX_PIXELS", 0)
    pooled = predict.evaluate(model, info, ten_crop=ten_crop)
    assert here[0] == pooled[0] and here[0].images == info.split_size("val")
    assert np.array_equal(here[1], pooled[1]) and np.array_equal(here[2], pooled[2])
