"""`alexnet train` rejects bad input with one line and exit 2, before any Ray resource is requested."""

from __future__ import annotations

import pytest

from alexnet.config import load_config
from alexnet.trainer import plan_placement
from jobs.cli import main
from pipelines.errors import UserError


@pytest.mark.parametrize("extra, needle", [
    (["--set", "run.num_workers=0"], "run.num_workers=0"),
    (["--set", "run.num_workers=-1"], "run.num_workers=-1"),
    (["--set", "optim.batch_size=30", "--set", "run.num_workers=4"], "not divisible by run.num_workers=4"),
    (["--set", "model.arch=resnet"], "torchvision"),
    (["--recipe", "nope"], "shipped recipes"),
])
def test_bad_config_exits_2_with_one_line(shapes_dataset, tmp_path, capsys, extra, needle):
    rc = main(["train", "--recipe", "smoke", "--data", str(shapes_dataset), "--workdir", str(tmp_path / "w"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "w").exists()  # failed before the work directory, Ray or MLflow


def test_a_directory_that_is_not_a_dataset_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["train", "--recipe", "smoke", "--data", str(tmp_path / "empty"), "--workdir", str(tmp_path / "w")])
    assert rc == 2 and "dataset.json" in capsys.readouterr().err


def test_labels_outside_the_classes_exit_2(shapes_dataset, tmp_path, capsys):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shapes_dataset, bad)
    meta = json.loads((bad / "dataset.json").read_text())
    meta["classes"] = meta["classes"][:2]  # labels 2..5 now lie outside the class list
    (bad / "dataset.json").write_text(json.dumps(meta))
    rc = main(["train", "--recipe", "smoke", "--data", str(bad), "--workdir", str(tmp_path / "w")])
    assert rc == 2 and "label" in capsys.readouterr().err


def test_placement_refuses_more_gpus_than_the_cluster_has_and_leaves_cpus_to_ray_data():
    with pytest.raises(UserError, match="needs 4 GPUs; the cluster has 2"):
        plan_placement(load_config("smoke", ["run.num_workers=4", "run.use_gpu=true"]), {"CPU": 8, "GPU": 2})
    with pytest.raises(UserError, match="needs 1 GPUs; the cluster has 0"):
        plan_placement(load_config("smoke", ["run.use_gpu=true"]), {"CPU": 2})
    cpu = plan_placement(load_config("smoke", ["run.num_workers=2"]), {"CPU": 2})
    assert not cpu.use_gpu and cpu.cpus_per_worker * 2 <= 1.0  # half the CPUs stay with Ray Data
    assert plan_placement(load_config("smoke"), {"CPU": 16, "GPU": 1}).use_gpu  # auto-detected
    with pytest.raises(UserError, match="leaves no CPU for Ray Data"):
        plan_placement(load_config("smoke", ["run.cpus_per_worker=1", "run.num_workers=2"]), {"CPU": 2})


def test_resume_from_a_path_that_is_no_checkpoint_exits_2_naming_the_option(shapes_dataset, tmp_path, capsys):
    rc = main(["train", "--recipe", "smoke", "--data", str(shapes_dataset), "--workdir", str(tmp_path / "w"), "--recipe", "smoke",
               "--resume-from", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"--resume-from {tmp_path / 'nowhere'}: not a readable checkpoint" in err[0], err
