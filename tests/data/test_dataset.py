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


@pytest.mark.fault("a shard without its label_name column", inputs=1,
                   outcome="UserError naming the shard and the column")
def test_missing_column(copy):
    shard = _rewrite_first_shard(copy, lambda t: t.drop_columns(["label_name"]))
    with pytest.raises(UserError, match=f"{shard}: missing column 'label_name'"):
        open_dataset(copy)


@pytest.mark.fault("a shard whose label column is a string", inputs=1,
                   outcome="UserError naming the shard, the column, both types")
def test_wrong_type(copy):
    shard = _rewrite_first_shard(copy, lambda t: t.set_column(t.schema.get_field_index("label"), "label",
                                                               t["label"].cast(pa.string())))
    with pytest.raises(UserError, match=f"{shard}: column 'label' has type string, expected int32"):
        open_dataset(copy)


@pytest.mark.fault("a shard with labels outside the class list", inputs=1,
                   outcome="UserError naming the shard and the label range")
def test_label_outside_the_class_list(copy):
    def bump(t):
        labels = pa.array([99] * t.num_rows, pa.int32())
        return t.set_column(t.schema.get_field_index("label"), "label", labels)

    shard = _rewrite_first_shard(copy, bump)
    with pytest.raises(UserError, match=f"{shard}: label values 99..99 outside the 6 classes"):
        open_dataset(copy)


@pytest.mark.fault("a shard whose row group is bigger than a reader takes at once", inputs=1,
                   outcome="UserError naming the shard, the row group and the limit, before any task reads it")
def test_an_oversized_row_group_is_refused_at_open(copy, monkeypatch):
    from pipelines import dataset

    shard = load_info(copy).shard_paths("train")[0]
    size = pq.ParquetFile(shard).metadata.row_group(0).total_byte_size
    monkeypatch.setattr(dataset, "MAX_ROW_GROUP_BYTES", size - 1)
    with pytest.raises(UserError, match=rf"{shard}: row group 0 holds \d+ MiB, over the \d+ MiB"):
        open_dataset(copy)


@pytest.mark.fault("dataset.json with schema_version 99", inputs=1,
                   outcome="UserError naming the file and the version")
def test_unknown_schema_version(copy):
    meta = json.loads((copy / INFO_FILE).read_text())
    meta["schema_version"] = 99
    (copy / INFO_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=f"{copy / INFO_FILE}: schema_version 99 is not supported"):
        open_dataset(copy)


@pytest.mark.fault("a listed shard deleted; counts that disagree with the shards", inputs=2,
                   outcome="UserError naming the missing shard; then one naming the count mismatch")
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


@pytest.mark.fault("a folder without dataset.json; a dataset.json that is not JSON", inputs=2,
                   outcome="UserError naming the missing or unreadable file")
def test_not_a_dataset(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / INFO_FILE}: missing"):
        open_dataset(tmp_path)
    (tmp_path / INFO_FILE).write_text("{not json")
    with pytest.raises(UserError, match="unreadable dataset metadata"):
        open_dataset(tmp_path)


def _set(ds: Path, field: str, value) -> None:
    meta = json.loads((ds / INFO_FILE).read_text())
    meta[field] = value(meta[field]) if callable(value) else value
    (ds / INFO_FILE).write_text(json.dumps(meta))


BAD_FIELDS = [
    ("shards", lambda s: {**s, "train": ["/etc/passwd"]}),
    ("shards", lambda s: {**s, "train": [f"../{s['train'][0]}"]}),
    ("shards", lambda s: {**s, "train": ["train/../../outside.parquet"]}),
    ("shards", lambda s: {**s, "train": ["s3://bucket/train/part.parquet"]}),
    ("shards", lambda s: {**s, "train": s["train"] * 2}),
    ("pixel_std", [0.0, 0.2, 0.2]),
    ("pixel_std", [0.2, 0.2]),
    ("pixel_std", [0.2, 0.2, float("nan")]),
    ("pixel_mean", [0.5, 0.5, 0.5, 0.5]),
    ("pixel_mean", ["0.5", 0.5, 0.5]),
    ("pca_eigval", [0.1, 0.01]),
    ("pca_eigval", [0.1, -0.01, 0.001]),
    ("pca_eigvec", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    ("counts", lambda c: {**c, "train": {**c["train"], "circle": -1}}),
    ("counts", lambda c: {**c, "train": {**c["train"], "circle": "12"}}),
    ("counts", lambda c: {**c, "train": {**c["train"], "no-such-class": 1}}),
    ("counts", lambda c: {**c, "test": {}}),
    ("counts", [1, 2]),
    ("classes", lambda c: c[:-1] + c[:1]),
    ("version", ""),
    ("image_format", "gif"),
    ("pixel_moments", {"sum": [1.0, 2.0], "outer": [0.0] * 9, "count": 1}),
]


@pytest.mark.fault("bad dataset.json fields: absolute, `..` and remote shard paths, duplicate "
                   "shards, zero, short or NaN pixel_std, bad mean, eigenvalues, eigenvectors, "
                   "counts, classes, version, format, moments", inputs=22,
                   outcome="one line each naming the file and the field; the dataset is not opened")
@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)])
def test_each_bad_field_is_one_line_naming_the_file_and_field(copy, field, value):
    _set(copy, field, value)
    with pytest.raises(UserError, match=rf"^{copy / INFO_FILE}: field '{field}': expected ") as err:
        open_dataset(copy)
    assert "\n" not in str(err.value)


@pytest.mark.fault("a shard written without Parquet statistics, its labels outside the classes", inputs=1,
                   outcome="UserError naming the shard and the label range (read from the column)")
def test_labels_are_checked_in_shards_written_without_statistics(copy):
    def bump(t):
        return t.set_column(t.schema.get_field_index("label"), "label", pa.array([99] * t.num_rows, pa.int32()))

    info = load_info(copy)
    shard = info.shard_paths("train")[0]
    pq.write_table(bump(pq.read_table(shard)), shard, write_statistics=False)
    assert pq.read_metadata(shard).row_group(0).column(2).statistics is None
    with pytest.raises(UserError, match=f"{shard}: label values 99..99 outside the 6 classes"):
        open_dataset(copy)
