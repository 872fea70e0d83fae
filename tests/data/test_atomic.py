"""Every file a reader relies on is written through pipelines.atomic: a write that fails leaves the
previous content and no temporary file. The failure is real: the kernel refuses the write
(RLIMIT_FSIZE, in a child process, as a full disk refuses it)."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.atomic import write_atomic

LIMIT = 8192  # bytes: any file the child writes beyond this fails with EFBIG

# Each writer, called in the child with a payload larger than LIMIT, targeting T/TARGET.
WRITERS = {
    "dataset.json": ("dataset.json", """
from pipelines.dataset import DatasetInfo, write_info
info = DatasetInfo(classes=[f"class-{i}" for i in range(2000)], counts={}, shards={}, pixel_mean=[0.5] * 3,
                   pixel_std=[0.2] * 3, pca_eigval=[1.0] * 3, pca_eigvec=[[1.0] * 3] * 3, version="v",
                   image_format="jpeg")
write_info(T, info)"""),
    "shard": ("part-00000000-00000000.parquet", """
import pyarrow as pa
from pipelines.dataset import SCHEMA
from pipelines.ingest.passes import _write_shard
row = {"id": "x", "image": bytes(range(256)) * 64, "label": 0, "label_name": "a", "height": 1, "width": 1, "source": "s"}
_write_shard([row], T / TARGET)"""),
    "rejects.csv": ("rejects.csv", """
from pipelines.ingest.passes import _write_csv
_write_csv(T / TARGET, ["path", "reason"], [(f"/data/{i}.jpg", "corrupt") for i in range(2000)])"""),
    "state.pt": ("state.pt", """
import torch
from alexnet.train import checkpoint
model = torch.nn.Linear(64, 64)
checkpoint.save(T, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), plateau={},
                epoch=0, config={"model": {"arch": "x"}, "optim": {"optimizer": "sgd"}}, dataset_version="v",
                metrics={}, num_classes=64)"""),
    "meta.json": ("meta.json", """
import torch
from alexnet.train import checkpoint
model = torch.nn.Linear(2, 2)  # state.pt fits; meta.json, with these metrics, does not
checkpoint.save(T, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), plateau={},
                epoch=0, config={"model": {"arch": "x"}, "optim": {"optimizer": "sgd"}}, dataset_version="v",
                metrics={f"val/class_{i}": 0.5 for i in range(1000)}, num_classes=2)"""),
    "schedule state": ("s.state.json", """
from jobs.schedule_state import save_state
from jobs import schedule as sch
save_state(T / TARGET, {f"nightly-{i}": sch.ScheduleState(last_outcome="ok " * 20) for i in range(200)})"""),
    "metric file": ("metric.json", """
from jobs.commands.evaluate import write_metric_file
write_metric_file(str(T / TARGET), {"metrics": {f"val/top1_{i}": 0.5 for i in range(1000)}})"""),
}


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.fault("a write the kernel refuses mid-file (RLIMIT_FSIZE, as a full disk does): "
                   "dataset.json, a shard, rejects.csv, a checkpoint's state.pt and meta.json, the "
                   "schedule state, a metric file", inputs=7,
                   outcome="the previous file intact (a new meta.json absent, not half-written); no "
                           "temporary file left")
@pytest.mark.parametrize("what", list(WRITERS))
def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, what):
    target, code = WRITERS[what]
    (tmp_path / target).write_bytes(b"previous")
    if what == "meta.json":
        (tmp_path / target).unlink()  # a new checkpoint folder: meta.json must not appear half-written
    prog = f"from pathlib import Path\nT = Path({str(tmp_path)!r})\nTARGET = {target!r}\n{code}\n"
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300,
                       preexec_fn=_limit_file_size, cwd=Path(__file__).parents[2])
    assert r.returncode != 0 and "File too large" in r.stderr, r.stderr[-2000:]
    if what == "meta.json":
        assert not (tmp_path / target).exists()
    else:
        assert (tmp_path / target).read_bytes() == b"previous"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in (target, "state.pt")]
    assert leftovers == []


@pytest.mark.fault("a serialiser that raises after writing half its content", inputs=1,
                   outcome="the previous content kept and no temporary file; the next write lands whole")
def test_a_writer_that_raises_changes_nothing(tmp_path):
    target = tmp_path / "dataset.json"
    target.write_text("old")

    def half(f):
        f.write(b"new, half of it")
        raise RuntimeError("serialiser failed")

    with pytest.raises(RuntimeError, match="serialiser failed"):
        write_atomic(target, half)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json"]
    write_atomic(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json"]
