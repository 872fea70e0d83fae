"""The dataset reader refuses a broken dataset with an error naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.dataset import INFO_FILE, load_info, open_dataset
from pipelines.errors import UserError


@pytest.fixture
def copy(shapes_dataset, tmp_path) -> Path:
    dest = tmp_path / "ds"
    shutil.copytree(shapes_dataset, dest)
    return dest


def _rewrite_first_shard(ds: Path, change) -> str:
    info = load_info(ds)
    shard = info.shard_paths("train")[0]
    pq.write_table(change(pq.read_table(shard)), shard)
    return shard


def test_a_good_dataset_opens(copy):
    info = open_dataset(copy)
    assert info.num_classes == 6 and info.split_size("train") > 0 and info.split_size("val") > 0


def test_missing_column(copy):
    shard = _rewrite_first_shard(copy, lambda t: t.drop_columns(["label_name"]))
    with pytest.raises(UserError, match=f"{shard}: missing column 'label_name'"):
        open_dataset(copy)


def test_wrong_type(copy):
    shard = _rewrite_first_shard(copy, lambda t: t.set_column(t.schema.get_field_index("label"), "label",
                                                               t["label"].cast(pa.string())))
    with pytest.raises(UserError, match=f"{shard}: column 'label' has type string, expected int32"):
        open_dataset(copy)


def test_label_outside_the_class_list(copy):
    def bump(t):
        labels = pa.array([99] * t.num_rows, pa.int32())
        return t.set_column(t.schema.get_field_index("label"), "label", labels)

    shard = _rewrite_first_shard(copy, bump)
    with pytest.raises(UserError, match=f"{shard}: label values 99..99 outside the 6 classes"):
        open_dataset(copy)


def test_unknown_schema_version(copy):
    meta = json.loads((copy / INFO_FILE).read_text())
    meta["schema_version"] = 99
    (copy / INFO_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=f"{copy / INFO_FILE}: schema_version 99 is not supported"):
        open_dataset(copy)


def test_missing_shard_and_count_mismatch(copy):
    info = load_info(copy)
    shard = Path(info.shard_paths("val")[0])
    rows = pq.read_metadata(shard).num_rows
    shard.unlink()
    with pytest.raises(UserError, match=f"{shard}: listed in {INFO_FILE} but missing"):
        open_dataset(copy)
    meta = json.loads((copy / INFO_FILE).read_text())
    meta["shards"]["val"] = meta["shards"]["val"][1:]
    (copy / INFO_FILE).write_text(json.dumps(meta))
    assert rows > 0
    with pytest.raises(UserError, match="counts say .* val images"):
        open_dataset(copy)


def test_not_a_dataset(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / INFO_FILE}: missing"):
        open_dataset(tmp_path)
    (tmp_path / INFO_FILE).write_text("{not json")
    with pytest.raises(UserError, match="unreadable dataset metadata"):
        open_dataset(tmp_path)
