"""Parquet dataset -> Ray Data pipelines of augmented batches, for training and validation.

Lazy and streaming: a list of work units (a slice of one Parquet row group each) -> one
map_batches operator whose tasks each read their unit and decode + augment it in batches of
`batch_rows` images on the CPU workers -> Ray Train's streaming split. Nothing is materialised.

One execution per run: the training pipeline is a single stream of every epoch of the run, one
after the other (each epoch visits the units in a new order, a seeded function of (seed, epoch)),
and the train loop takes its batches for epoch e as the next K batches of it. Workers, imports and
the streaming executor are set up once, and the next epoch's first batches are already waiting
while an epoch is validated (every Ray Data execution pays for its start and for its first
second, and a per-epoch one paid it every epoch). The loop must take every epoch from one
iterator (alexnet.train.loop.run_stream): each iter() over Ray Data's iter_*_batches starts a new
execution at the stream's first epoch. Validation, which must see the whole split each time, is
one execution per epoch unless the workers keep its batches (alexnet/train/val_batches.py).

Why not read_parquet -> map_batches: that is two operators, and on a small node Ray Data 2.60
reserves a CPU for each (its ReservationOpResourceAllocator rounds each operator's share up to one
task), so the decoding ran one task at a time while the reads lasted (task spans on 2 CPUs;
benchmarks/RESULTS.md). Reading inside the decoding task leaves one operator that may use every
CPU, reads each row group once, and keeps tasks small enough to spread over many cores. A task
takes several consecutive units when the stream is long (stream_blocks), so that Ray Data's pause
between one task and the next on a worker costs little.

Per epoch, with W train workers, batch size B per worker and N training images: the stream holds
M = W * K * B images of each epoch, K = floor(floor(N / W) / B), cut from the end of that epoch's
unit order (fewer than W * (B + 1) images, a different set each epoch). Ray Train's default
DataConfig splits the stream with `streaming_split(W, equal=True)` and every worker takes exactly
K batches per epoch (equal counts: DDP cannot deadlock on a missing all-reduce). Each image of
an epoch's M is seen once; an epoch's batches are the stream's next K, so a few batches' worth of
images (those in flight and in the local shuffle buffer at the boundary) land in the neighbouring
epoch, augmented as their own epoch says.

Where the bytes go, per node: every map task reads its own unit straight from storage (local disk,
NFS or s3://: nothing funnels through the driver, which reads only the Parquet footers), and Ray
Data spreads the tasks over the nodes. Memory a node holds for the training stream, at most:
- per running map task (one per CPU that Ray Data is given): one Parquet row group (ingest writes
  them at ~32 MB) plus `batch_rows` output images (128 x 224 x 224 x 3 B = 19 MB) on top of the
  worker process itself (~0.5 GB resident once torch is imported);
- Ray Data's output buffers in the object store, bounded by its streaming executor's object-store
  budget (a share of the node's object store, itself 30% of its RAM by default): a consumer that
  pauses (validation, a checkpoint) backpressures the tasks instead of growing the buffers;
- per train worker: its local shuffle buffer (`data.shuffle_buffer` images, 1024 x 150 KB = 154 MB
  at 224 px) and the prefetched batches (alexnet.train.loop.PREFETCH_BATCHES x the batch).

Seeded augmentation is a pure function of (seed, epoch, image id): each task knows the epoch of
its unit from the unit's position in the stream, offset by the epoch the stream starts at. That
start is read from a `StartEpoch` (a tiny actor) when the stream's first tasks run, so a worker
group restarted from a checkpoint continues at the right epoch: rank 0 sets it before any worker
creates the run's iterator (then a barrier), and Ray Train's split coordinator starts the
execution only once every worker has asked for it.
"""

from __future__ import annotations

import secrets
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data import DataContext

from pipelines import storage
from pipelines.dataset import DatasetInfo
from pipelines.errors import UserError
from pipelines.read.augment import TrainPreset, ValPreset, apply_preset
from pipelines.read.device_augment import plan_batch

# The stored size lets a task draw every image's crop before decoding it, and decode a JPEG at
# reduced size when the recipe needs at most half of it (and raw pixels carry their shape in it).
COLUMNS = ["id", "image", "label", "height", "width"]
MAX_BLOCKS = 20_000  # blocks of the stream's item list (a 90-epoch ImageNet run has ~110k units)
# Images one map task works through when the stream is long enough: a second or two of decoding
# on a core. Ray Data leaves ~0.1 s between a task's end and the next task on its worker (ray
# issues 42377, 45934), a third of the time of a 375-image unit.
TASK_ROWS = 2048


class _Value:
    def __init__(self):
        self.value = 0

    def set(self, value: int) -> None:
        self.value = value

    def get(self) -> int:
        return self.value


class StartEpoch:
    """The epoch a run's training stream starts at (0, or where a resumed run continues). Picklable
    handle to a tiny Ray actor (num_cpus=0) that the stream's tasks read.

    Driver: `start = StartEpoch.create()`; pass it to `train_dataset(..., start=start)` and to the
    train loop. Train loop, once, before it creates the run's iterator: `if rank == 0:
    start.set(first_epoch)`, then a barrier across workers. The actor lives as long as the process
    that created it (the driver)."""

    def __init__(self, handle):
        self._handle = handle

    @staticmethod
    def create() -> "StartEpoch":
        """Start the actor (on the driver; needs Ray initialised). It starts at epoch 0."""
        if not ray.is_initialized():
            raise RuntimeError("StartEpoch.create() needs Ray initialised (ray.init) first")
        return StartEpoch(ray.remote(num_cpus=0, max_restarts=-1)(_Value).remote())

    def set(self, epoch: int) -> None:
        """Blocks until the actor holds `epoch`: every `get` issued after this returns it."""
        ray.get(self._handle.set.remote(int(epoch)))

    def get(self) -> int:
        return ray.get(self._handle.get.remote())

    def __reduce__(self):
        return StartEpoch, (self._handle,)


@contextmanager
def _per_file_reads():
    """Ray Data 2.60's default Parquet reader (DataSourceV2) packs small files into one read task
    whose single output block then feeds a single map task, so one core decodes while the others
    idle; the per-file reader gives every file its own task (figures in benchmarks/RESULTS.md).
    The flag is read only while read_parquet builds the plan, so it is restored right after; the
    Dataset keeps its own copy of the context."""
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

    try:
        with storage.open_input(path) as f:
            return pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{path}: not a readable Parquet shard ({err})") from None


def _cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0)) if ray.is_initialized() else 1.0


def _read_unit(unit: dict, columns: list[str]) -> dict:
    """One work unit's rows as a numpy batch (columns -> arrays)."""
    with storage.open_input(unit["path"]) as f:  # a local path or a URI (s3://...), read by this task
        table = pq.ParquetFile(f).read_row_group(unit["group"], columns=columns)
    table = table.slice(unit["start"], unit["rows"])
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}


def unit_order(n: int, order_seed: int | None, epoch: int) -> list[int]:
    """The order in which an epoch visits the n work units: a permutation seeded by (order_seed,
    epoch); identity when order_seed is None (validation)."""
    if order_seed is None:
        return list(range(n))
    return np.random.default_rng([int(order_seed) & 0xFFFFFFFFFFFFFFFF, int(epoch)]).permutation(n).tolist()


def epoch_plan(units: list[dict], order_seed: int | None, epoch: int, per_epoch: int | None) -> list[tuple[int, int]]:
    """(unit index, rows taken from its start) for every position of an epoch: the units in the
    epoch's order, cut after `per_epoch` rows (None: all)."""
    plan, taken = [], 0
    for index in unit_order(len(units), order_seed, epoch):
        rows = units[index]["rows"] if per_epoch is None else max(0, min(units[index]["rows"], per_epoch - taken))
        plan.append((index, rows))
        taken += rows
    return plan


def _run_units(batch: dict, *, units: list[dict], columns: list[str], fn, fn_kwargs: dict, batch_rows: int,
               order_seed: int | None, start: "StartEpoch | None", first_epoch: int, per_epoch: int | None):
    """`map_batches` entry point: stream items -> each item's unit (item i is position i mod n of
    epoch first + i // n), read and turned into `fn`'s output for every `batch_rows` rows."""
    first = start.get() if start is not None else first_epoch
    plans: dict[int, list] = {}
    for item in np.asarray(batch["item"]).tolist():
        epoch = first + item // len(units)
        if epoch not in plans:
            plans[epoch] = epoch_plan(units, order_seed, epoch, per_epoch)
        index, take = plans[epoch][item % len(units)]
        if take == 0:
            continue
        for part in _unit_batches({**units[index], "rows": take}, columns, batch_rows):
            yield fn(part, epoch=epoch, **fn_kwargs)


def _unit_batches(unit: dict, columns: list[str], batch_rows: int):
    """One work unit's rows, `batch_rows` at a time."""
    rows = _read_unit(unit, columns)
    for offset in range(0, unit["rows"], batch_rows):
        yield {c: v[offset:offset + batch_rows] for c, v in rows.items()}


def stream_blocks(units: list[dict], epochs: int, cpus: float) -> int:
    """Blocks (one map task each) of a stream of `epochs` x `units`: consecutive units share a
    task up to about TASK_ROWS images, while the stream keeps at least four tasks per CPU (so
    that its last round is short), one unit per task at least, and at most MAX_BLOCKS blocks."""
    items = len(units) * epochs
    if items == 0:
        return 1
    unit_rows = sum(u["rows"] for u in units) / len(units)
    task_rows = min(TASK_ROWS, unit_rows * items / max(1, int(4 * cpus)))
    per_task = max(1, int(task_rows // max(1.0, unit_rows)))
    return max(1, min(items, MAX_BLOCKS, -(-items // per_task)))


def _unit_dataset(paths: list[str], columns: list[str], fn, fn_kwargs: dict, *, batch_rows: int,
                  order_seed: int | None, start, first_epoch: int, epochs: int, per_epoch: int | None):

    cpus = _cluster_cpus()
    units = _units(paths, cpus, batch_rows)
    kwargs = {"units": units, "columns": columns, "fn": fn, "fn_kwargs": fn_kwargs, "batch_rows": batch_rows,
              "order_seed": order_seed, "start": start, "first_epoch": first_epoch, "per_epoch": per_epoch}
    # Each block of items is one map task, which handles its consecutive items one after the other.
    items = ray.data.range(len(units) * epochs, override_num_blocks=stream_blocks(units, epochs, cpus))
    items = items.rename_columns({"id": "item"})
    return items.map_batches(_run_units, batch_size=None, batch_format="numpy", fn_kwargs=kwargs)


def val_batches_here(info: DatasetInfo, *, crop: int, resize: int, ten_crop: bool = False, batch_rows: int = 128):
    """`val_dataset`'s batches, the same rows in the same order through the same preset, made in
    this process with no Ray Data execution: for a split small enough that starting one (a few
    seconds, more on a busy machine) would cost more than the work."""
    _check_geometry(crop, resize)
    preset = ValPreset(crop=crop, resize=resize, ten_crop=ten_crop)
    for unit in _units(info.shard_paths("val"), 1, batch_rows):
        for part in _unit_batches(unit, COLUMNS, batch_rows):
            yield apply_preset(part, preset=preset, seed=None)


def _check_geometry(crop: int, resize: int) -> None:
    if crop < 1:
        raise UserError(f"data.crop={crop}: the crop must be at least 1 px")
    if resize < crop:
        raise UserError(f"data.resize={resize} is smaller than data.crop={crop}")


def train_dataset(info: DatasetInfo, preset: TrainPreset, *, seed: int | None, epochs: int = 1,
                  per_epoch: int | None = None, start: StartEpoch | None = None, epoch: int = 0,
                  batch_rows: int = 128, keep_key: bool = False, decode_on_device: bool = False):
    """The training stream: `epochs` epochs one after the other, each image augmented by `preset`
    (train_preset), columns `image` (uint8 N,3,crop,crop) and `label` (int64), plus `key` (int64,
    first 60 bits of the image id) when `keep_key`. With `decode_on_device`, the images stay
    encoded and each row carries its augmentation plan instead (columns of
    pipelines.read.device_augment.plan_batch), for the train worker to decode and augment on its GPU.

    seed: None = unseeded augmentation; epochs: epochs in the stream; per_epoch: images of each
    epoch in the stream (None: all; the train loop passes W * K * B, see the module docstring);
    start: where the tasks read the first epoch (None: `epoch`); batch_rows: images per
    `map_batches` call (peak task memory ~ batch_rows x crop^2 x 3 bytes, plus one row group).

    Unseeded, the units' order is drawn once per call.
    """
    if epochs < 1:
        raise UserError(f"epochs={epochs}: the stream needs at least one epoch")
    order_seed = seed if seed is not None else secrets.randbits(63)
    return _unit_dataset(info.shard_paths("train"), COLUMNS, plan_batch if decode_on_device else apply_preset,
                         {"preset": preset, "seed": seed, "keep_key": keep_key}, batch_rows=batch_rows,
                         order_seed=order_seed, start=start, first_epoch=epoch, epochs=epochs, per_epoch=per_epoch)


def train_sample(info: DatasetInfo, preset: TrainPreset, n: int, *, seed: int | None = None) -> dict:
    """Up to `n` training images augmented as the stream augments them (`apply_preset`, the same
    preset), made in this process from one row group drawn at random: a report's picture of
    what the model saw. A Ray Data execution would spend seconds starting up for a few images."""
    paths = info.shard_paths("train")
    if not paths:
        raise UserError(f"{info.path}: the dataset has no train shards to sample")
    rng = np.random.default_rng(seed)
    path = paths[int(rng.integers(len(paths)))]
    meta = _footer(path)
    group = int(rng.integers(meta.num_row_groups))
    rows = _read_unit({"path": path, "group": group, "start": 0, "rows": meta.row_group(group).num_rows}, COLUMNS)
    pick = np.sort(rng.choice(len(rows["label"]), size=min(n, len(rows["label"])), replace=False))
    return apply_preset({c: v[pick] for c, v in rows.items()}, preset=preset, seed=seed)


def stored_side(info: DatasetInfo) -> int:
    """The shorter side, in px, of the training images as the dataset stores them: ingest's
    --resize (or --raw-size), else the median over the stored sizes (read from the footers' columns,
    not the images)."""
    params = info.params or {}
    if info.image_format == "raw" and params.get("raw_size"):
        return int(params["raw_size"])
    if params.get("resize"):
        return int(params["resize"])
    sides = []
    for path in info.shard_paths("train"):
        with storage.open_input(path) as f:
            table = pq.read_table(f, columns=["height", "width"])
        sides.append(np.minimum(table["height"].to_numpy(), table["width"].to_numpy()))
    return int(np.median(np.concatenate(sides))) if sides else 0


def scale_note(stored: int, resize: int) -> str | None:
    """One line when the recipe's scale is far from the size the images were stored at (ingest's
    --resize, stored_side): what was stored, what the recipe asks, what that costs. None when they fit."""
    if stored >= 2 * resize:
        return (f"data: images are stored at {stored} px (shorter side) and this recipe scales them to "
                f"data.resize={resize}: every epoch decodes ~{(stored / resize) ** 2:.0f}x the pixels it uses "
                f"(JPEG DCT scaling saves part of that); for faster epochs, ingest a copy at this size with "
                f"`alexnet ingest SOURCE DEST --resize {resize}`")
    if 0 < stored and stored * 1.5 <= resize:
        return (f"data: images are stored at {stored} px (shorter side) and this recipe scales them up to "
                f"data.resize={resize}: the network sees no detail finer than {stored} px holds, at "
                f"~{(resize / stored) ** 2:.0f}x the compute per image of a recipe at that size")
    return None


def train_preset(info: DatasetInfo, *, crop: int, resize: int, pca_lighting: float, flip: bool,
                 random_resized_crop: bool = False) -> TrainPreset:
    """The training augmentation for this dataset (its PCA eigenvalues/vectors for the lighting),
    built once per run and passed wherever the run augments (the stream, the GPU path, the
    report's sample). crop: px; resize: px, the shorter side every image is scaled to before the
    paper's crop (as validation does before its centre crop); pca_lighting: std of the PCA
    lighting coefficients (paper 0.1, 0 = off); flip: random horizontal flip;
    random_resized_crop: torchvision's RandomResizedCrop(crop) instead of the paper's crop."""
    _check_geometry(crop, resize)
    return TrainPreset(crop=crop, resize=resize, eigval=tuple(info.pca_eigval), eigvec=tuple(map(tuple, info.pca_eigvec)),
                       pca_lighting=pca_lighting, flip=flip, random_resized_crop=random_resized_crop)


def val_dataset(info: DatasetInfo, *, crop: int, resize: int, ten_crop: bool = False, batch_rows: int = 128,
                keep_key: bool = False):
    """The evaluation pipeline (deterministic): shorter side resized to `resize` px, centre crop
    of `crop` px -> `image` uint8 (N,3,crop,crop), `label` int64. `ten_crop=True`: `image` is uint8
    (N,10,3,crop,crop), the 4 corners + centre and the same of the mirrored image (the paper's
    test-time averaging; the evaluator averages the 10 predictions over dim 1). Other keywords as
    in `train_dataset`."""
    _check_geometry(crop, resize)
    preset = ValPreset(crop=crop, resize=resize, ten_crop=ten_crop)
    return _unit_dataset(info.shard_paths("val"), COLUMNS, apply_preset,
                         {"preset": preset, "seed": None, "keep_key": keep_key}, batch_rows=batch_rows,
                         order_seed=None, start=None, first_epoch=0, epochs=1, per_epoch=None)
