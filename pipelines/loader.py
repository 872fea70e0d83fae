"""Parquet dataset -> Ray Data pipelines of augmented batches, for training and validation.

Lazy and streaming: nothing is materialised; Ray Train splits each dataset across the train
workers (equal row counts per worker) and every epoch re-executes the pipeline.
"""

from __future__ import annotations

from pipelines.augment import TrainPreset, ValPreset, apply_preset
from pipelines.dataset import DatasetInfo

COLUMNS = ["id", "image", "label"]


def train_dataset(info: DatasetInfo, *, crop: int, pca_std: float, flip: bool, seed: int | None,
                  batch_rows: int = 64):
    import ray.data

    preset = TrainPreset(crop=crop, eigval=tuple(info.pca_eigval), eigvec=tuple(map(tuple, info.pca_eigvec)),
                         pca_std=pca_std, flip=flip)
    ds = ray.data.read_parquet(info.shard_paths("train"), columns=COLUMNS, shuffle="files")
    return ds.map_batches(apply_preset, fn_kwargs={"preset": preset, "seed": seed}, batch_size=batch_rows,
                          batch_format="numpy")


def val_dataset(info: DatasetInfo, *, crop: int, resize: int, batch_rows: int = 64):
    import ray.data

    preset = ValPreset(crop=crop, resize=resize)
    ds = ray.data.read_parquet(info.shard_paths("val"), columns=COLUMNS)
    return ds.map_batches(apply_preset, fn_kwargs={"preset": preset, "seed": None}, batch_size=batch_rows,
                          batch_format="numpy")
