"""Parquet dataset -> Ray Data pipelines of augmented batches, for training and validation.

Lazy and streaming: a list of work units (a slice of one Parquet row group each) -> one
map_batches operator whose tasks each read their unit and decode + augment it in batches of
`batch_rows` images on the CPU workers -> Ray Train's streaming split. Nothing is materialised;
every epoch re-executes the pipeline, and the units run in a new order each epoch (a seeded
function of (seed, epoch)).

Why not read_parquet -> map_batches: that is two operators, and on a small node Ray Data 2.60
reserves a CPU for each (its ReservationOpResourceAllocator rounds each operator's share up to one
task), so the decoding ran one task at a time while the reads lasted, which is the whole epoch
(task spans on 2 CPUs; benchmarks/RESULTS.md). Reading inside the decoding task leaves one
operator that may use every CPU, reads each row group once, and keeps tasks small enough to
spread over many cores (`_task_rows`).

Per epoch, with W train workers, batch size B per worker and N training images: Ray Train's
default DataConfig splits the stream with `streaming_split(W, equal=True)`, so every worker gets
floor(N / W) rows (the N mod W others are dropped that epoch); `iter_torch_batches(drop_last=True)`
then yields floor(floor(N / W) / B) batches on every worker (equal counts: DDP cannot deadlock on
a missing all-reduce) and drops each worker's last partial batch. Every image is seen at most once
per epoch; fewer than W * (B + 1) images are skipped, and which ones changes with the shuffle.

Seeded augmentation is a pure function of (seed, epoch, image id). The map tasks learn the epoch
from an `EpochClock`; the train loop must call, on rank 0, `clock.set(epoch)` before any worker
creates that epoch's iterator (followed by a barrier across workers). That is sufficient because
Ray Train's split coordinator starts an epoch's execution only once every worker has asked for
it, and ends the previous execution before (see ray/data/_internal/iterator/stream_split_iterator.py,
SplitCoordinator._barrier): no task of epoch e+1 can run before rank 0 set e+1, and none of epoch e after.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import contextmanager

from pipelines.augment import TrainPreset, ValPreset, apply_preset
from pipelines.dataset import DatasetInfo
from pipelines.device_augment import plan_batch
from pipelines.errors import UserError

log = logging.getLogger(__name__)

COLUMNS = ["id", "image", "label"]
RAW_COLUMNS = ["height", "width"]  # raw pixels carry their shape in these


class _Clock:
    def __init__(self):
        self.epoch = 0

    def set(self, epoch: int) -> None:
        self.epoch = epoch

    def get(self) -> int:
        return self.epoch


class EpochClock:
    """Tells the augmentation tasks which epoch they serve, so augmentation is a pure function of
    (seed, epoch, image id). Picklable handle to a tiny Ray actor (num_cpus=0).

    Driver: `clock = EpochClock.create()`; pass it to `train_dataset(..., clock=clock)` and to the
    train loop (e.g. in train_loop_config). Train loop, every epoch, before `iter_torch_batches`:
    `if rank == 0: clock.set(epoch)`, then a barrier across workers. The actor lives as long as
    the process that created it (the driver)."""

    def __init__(self, handle):
        self._handle = handle

    @staticmethod
    def create() -> "EpochClock":
        """Start the actor (on the driver; needs Ray initialised). It starts at epoch 0."""
        import ray

        if not ray.is_initialized():
            raise RuntimeError("EpochClock.create() needs Ray initialised (ray.init) first")
        return EpochClock(ray.remote(num_cpus=0, max_restarts=-1)(_Clock).remote())

    def set(self, epoch: int) -> None:
        """Blocks until the actor holds `epoch`: every `get` issued after this returns sees it."""
        import ray

        ray.get(self._handle.set.remote(int(epoch)))

    def get(self) -> int:
        import ray

        return ray.get(self._handle.get.remote())

    def __reduce__(self):
        return EpochClock, (self._handle,)


@contextmanager
def _per_file_reads():
    """Ray Data 2.60's default Parquet reader (DataSourceV2) packs small files into one read task
    whose single output block then feeds a single map task: a 2000-image epoch was decoded by one
    core while the others idled (measured: 1 read task, 1 map task; 540 img/s on 2 CPUs and 400
    on 16). The per-file reader splits the work across the cluster (900 img/s on 2 CPUs; see
    benchmarks/RESULTS.md). The flag is read only while read_parquet builds the plan, so it is
    restored right after; the Dataset keeps its own copy of the context."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        yield
    finally:
        ctx.use_datasource_v2 = before


def read_shards(paths: list[str], columns: list[str], **kw):
    """`ray.data.read_parquet` of a dataset's shards, one read task per file (see _per_file_reads):
    the rows as stored, for `alexnet predict` over a dataset (training and evaluation read their
    rows inside the decoding tasks instead, see the module docstring)."""
    import ray.data

    from pipelines import storage

    fs, fs_paths = storage.pyarrow_paths(paths)  # local paths or URIs, resolved as everywhere else
    with _per_file_reads():
        return ray.data.read_parquet(fs_paths, columns=columns, filesystem=fs, **kw)


def _task_rows(total: int, cpus: float, batch_rows: int) -> int:
    """Rows per work unit: about four units per CPU for the split (so that the last round of tasks
    is short), at least one map batch, and at most 1024 images (~150 MB of 224 px output)."""
    return int(min(1024, max(batch_rows, -(-total // max(1, int(4 * cpus))))))


def _units(paths: list[str], cpus: float, batch_rows: int) -> list[dict]:
    """Work units over the shards' row groups (footers only): {path, group, start, rows}, each at
    most `_task_rows` rows. A row group bigger than that is split (each unit reads its group)."""
    metas = [(path, _footer(path)) for path in paths]
    task_rows = _task_rows(sum(meta.num_rows for _, meta in metas), cpus, batch_rows)
    units = []
    for path, meta in metas:
        for group in range(meta.num_row_groups):
            n = meta.row_group(group).num_rows
            units += [{"path": path, "group": group, "start": start, "rows": min(task_rows, n - start)}
                      for start in range(0, n, task_rows)]
    return units


def _footer(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import storage

    try:
        with storage.open_input(path) as f:
            return pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{path}: not a readable Parquet shard ({err})") from None


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0)) if ray.is_initialized() else 1.0


def _read_unit(unit: dict, columns: list[str]) -> dict:
    """One work unit's rows as a numpy batch (columns -> arrays)."""
    import pyarrow.parquet as pq

    from pipelines import storage

    with storage.open_input(unit["path"]) as f:  # a local path or a URI (s3://...), read by this task
        table = pq.ParquetFile(f).read_row_group(unit["group"], columns=columns)
    table = table.slice(unit["start"], unit["rows"])
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}


def unit_order(n: int, order_seed: int | None, epoch: int) -> list[int]:
    """The order in which an epoch visits the n work units: a permutation seeded by (order_seed,
    epoch); identity when order_seed is None (validation)."""
    import numpy as np

    if order_seed is None:
        return list(range(n))
    return np.random.default_rng([int(order_seed) & 0xFFFFFFFFFFFFFFFF, int(epoch)]).permutation(n).tolist()


def _run_units(batch: dict, *, units: list[dict], columns: list[str], fn, fn_kwargs: dict, batch_rows: int,
               order_seed: int | None, clock: "EpochClock | None", epoch: int):
    """`map_batches` entry point (one unit index per call): reads this epoch's unit at that position
    and yields `fn`'s output for every `batch_rows` rows of it. The epoch (from the clock, once per
    unit) seeds both the unit order and the augmentation."""
    import numpy as np

    if clock is not None:
        epoch = clock.get()
    order = unit_order(len(units), order_seed, epoch)
    for position in np.asarray(batch["item"]).tolist():
        index = order[position]
        rows = _read_unit(units[index], columns)
        for start in range(0, units[index]["rows"], batch_rows):
            part = {c: v[start:start + batch_rows] for c, v in rows.items()}
            yield fn(part, epoch=epoch, **fn_kwargs)


def _unit_dataset(paths: list[str], columns: list[str], fn, fn_kwargs: dict, *, batch_rows: int,
                  order_seed: int | None, clock, epoch: int, num_cpus: float, concurrency: int | None):
    import ray.data

    units = _units(paths, _cluster_cpus(), batch_rows)
    items = ray.data.range(len(units), override_num_blocks=max(1, len(units)))  # one block, one task per unit
    items = items.rename_columns({"id": "item"})
    return items.map_batches(_run_units, batch_size=None, batch_format="numpy",
                             fn_kwargs={"units": units, "columns": columns, "fn": fn, "fn_kwargs": fn_kwargs,
                                        "batch_rows": batch_rows, "order_seed": order_seed, "clock": clock,
                                        "epoch": epoch},
                             num_cpus=num_cpus, concurrency=concurrency)


def _columns(info: DatasetInfo) -> list[str]:
    return COLUMNS + (RAW_COLUMNS if info.image_format == "raw" else [])


def _check_crop(info: DatasetInfo, crop: int, option: str) -> None:
    if crop < 1:
        raise UserError(f"{option}={crop}: the crop must be at least 1 px")


def train_dataset(info: DatasetInfo, *, crop: int, pca_std: float, flip: bool, seed: int | None,
                  random_resized_crop: bool = False, clock: EpochClock | None = None, batch_rows: int = 128,
                  epoch: int = 0, keep_key: bool = False, num_cpus: float = 1.0,
                  concurrency: int | None = None, decode_on_device: bool = False):
    """The training pipeline: columns `image` (uint8 N,3,crop,crop) and `label` (int64), plus
    `key` (int64, first 60 bits of the image id) when `keep_key`. With `decode_on_device`, the
    images stay encoded and each row carries its augmentation plan instead (columns of
    pipelines.device_augment.plan_batch): the train worker decodes and augments on its GPU
    with `augment_on_device(batch, train_preset(info, ...), device)`.

    crop: px; pca_std: std of the PCA lighting coefficients (paper 0.1, 0 = off); flip: random
    horizontal flip; seed: None = unseeded augmentation; random_resized_crop: torchvision's
    RandomResizedCrop(crop) instead of the paper's random crop; clock: where the tasks read the
    epoch (None: the fixed `epoch`, e.g. for tests and benchmarks); batch_rows: images per
    `map_batches` call (peak task memory ~ batch_rows x crop^2 x 3 bytes, plus one row group);
    num_cpus: CPUs each map task reserves (1: decoding is single-threaded; a 2-CPU node with 1 CPU
    held by training still runs one task at a time); concurrency: cap on simultaneous map tasks
    (None: as many as free CPUs allow).

    The work units (row-group slices) run in a new order each epoch, a function of (seed, epoch)
    with the epoch read from `clock` (without a clock, every execution uses `epoch`'s order);
    unseeded, the order's seed is drawn once per call.
    """
    _check_crop(info, crop, "data.crop")
    if seed is not None and clock is None:
        log.warning("train_dataset: seed without an EpochClock gives every epoch epoch %d's augmentations; "
                    "pass clock=EpochClock.create() and call clock.set(epoch) in the train loop", epoch)
    preset = train_preset(info, crop=crop, pca_std=pca_std, flip=flip, random_resized_crop=random_resized_crop)
    columns = COLUMNS + RAW_COLUMNS if decode_on_device else _columns(info)
    order_seed = seed if seed is not None else secrets.randbits(63)
    return _unit_dataset(info.shard_paths("train"), columns, plan_batch if decode_on_device else apply_preset,
                         {"preset": preset, "seed": seed, "keep_key": keep_key}, batch_rows=batch_rows,
                         order_seed=order_seed, clock=clock, epoch=epoch, num_cpus=num_cpus, concurrency=concurrency)


def train_preset(info: DatasetInfo, *, crop: int, pca_std: float, flip: bool,
                 random_resized_crop: bool = False) -> TrainPreset:
    """The training augmentation for this dataset (its PCA eigenvalues/vectors for the lighting)."""
    return TrainPreset(crop=crop, eigval=tuple(info.pca_eigval), eigvec=tuple(map(tuple, info.pca_eigvec)),
                       pca_std=pca_std, flip=flip, random_resized_crop=random_resized_crop)


def val_dataset(info: DatasetInfo, *, crop: int, resize: int, ten_crop: bool = False, batch_rows: int = 128,
                keep_key: bool = False, num_cpus: float = 1.0, concurrency: int | None = None):
    """The evaluation pipeline (deterministic): shorter side resized to `resize` px, centre crop
    of `crop` px -> `image` uint8 (N,3,crop,crop), `label` int64. `ten_crop=True`: `image` is uint8
    (N,10,3,crop,crop), the 4 corners + centre and the same of the mirrored image (the paper's
    test-time averaging; the evaluator averages the 10 predictions over dim 1). Other keywords as
    in `train_dataset`."""

    _check_crop(info, crop, "data.crop")
    if resize < crop:
        raise UserError(f"data.resize={resize} is smaller than data.crop={crop}")
    preset = ValPreset(crop=crop, resize=resize, ten_crop=ten_crop)
    return _unit_dataset(info.shard_paths("val"), _columns(info), apply_preset,
                         {"preset": preset, "seed": None, "keep_key": keep_key}, batch_rows=batch_rows,
                         order_seed=None, clock=None, epoch=0, num_cpus=num_cpus, concurrency=concurrency)
