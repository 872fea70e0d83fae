"""Batch prediction and evaluation of a logged model with Ray Data.

Images are decoded and centre-cropped by CPU tasks exactly like the val split in training
(pipelines.read.augment.ValPreset, with the crop/resize stored in the model); a pool of actors, one
GPU each where there are GPUs, holds the model and turns uint8 crops into top-k predictions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
import torch
from ray.data import ActorPoolStrategy

from alexnet.serve.model_files import build
from pipelines import storage
from pipelines.dataset import INFO_FILE, load_info
from pipelines.decode import source_array
from pipelines.errors import UserError
from pipelines.images import IMAGE_EXTENSIONS, MAX_IMAGE_BYTES
from pipelines.read.augment import ValPreset, stored_dim
from pipelines.read.loader import read_shards, val_batches_here, val_dataset
from pipelines.shared_folder import check_shared


@dataclass(frozen=True)
class Scores:
    images: int
    top1: float
    top5: float


def geometry(model, crop: int | None = None, resize: int | None = None) -> tuple[int, int]:
    """The val crop and the shorter side it is cut from: stored in the model, or given."""
    crop = crop or getattr(model, "crop", None)
    resize = resize or getattr(model, "resize", None) or crop
    if not crop:
        raise UserError("the model does not record its input size: pass --crop (and --resize)")
    return int(crop), int(resize)


def _preprocess(batch: dict, *, preset: ValPreset, source_files: bool = False) -> dict:
    """Images -> uint8 NCHW centre crops; an unreadable image is flagged, not fatal. Rows of a
    dataset hold stored images; with `source_files` they hold the bytes of image files, decoded
    as ingest decodes a source (any format, EXIF orientation applied), so a photo gets the
    pixels it would have had in training."""
    n = len(batch["image"])
    images = np.zeros((n, 3, preset.crop, preset.crop), dtype=np.uint8)
    errors = [""] * n
    for i in range(n):
        if source_files and batch["read_error"][i]:
            errors[i] = batch["read_error"][i]
            continue
        try:
            if source_files:
                images[i] = preset.array(source_array(batch["image"][i]))
            else:
                images[i] = preset.stored(batch["image"][i], height=stored_dim(batch, "height", i),
                                          width=stored_dim(batch, "width", i))
        except (ValueError, OSError) as err:  # ImageDecodeError is a ValueError
            errors[i] = str(err) or type(err).__name__
    labels = batch.get("label")
    return {"id": batch["id"], "source": batch["source"], "image": images, "error": np.asarray(errors, dtype=object),
            "label": np.asarray(labels if labels is not None else [-1] * n, dtype=np.int64)}


def class_probs(model, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, classes) probabilities; (N, K, C, H, W), K crops per image -> the
    mean of the crops' softmax, as in the paper and as each epoch's val/top1 (alexnet.train.epochs),
    so the champion score and `evaluate --ten-crop` agree with the run's own curve."""
    if images.ndim == 5:
        n, k = images.shape[:2]
        return torch.softmax(model(images.flatten(0, 1)).float(), dim=1).view(n, k, -1).mean(dim=1)
    return torch.softmax(model(images).float(), dim=1)


class Predictor:
    """Actor: holds the model (on its GPU if it has one); a uint8 batch -> top-k table."""

    def __init__(self, model_ref, top_k: int):
        spec, weights = ray.get(model_ref[0])  # wrapped in a list so Ray does not resolve it on the driver
        model = build(spec, weights)  # rebuilt from its spec and tensors, like every model this project loads
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.classes = list(model.classes)
        self.k = min(top_k, len(self.classes))

    def __call__(self, batch: dict) -> pa.Table:
        images = torch.from_numpy(np.ascontiguousarray(batch["image"])).to(self.device)
        with torch.inference_mode():
            probs, idx = class_probs(self.model, images).topk(self.k, dim=1)
        probs, idx = probs.cpu().numpy(), idx.cpu().numpy()  # sync point: device -> host
        labels = np.asarray(batch["label"], dtype=np.int64)
        ok = np.asarray([not e for e in batch.get("error", [""] * len(labels))])
        return pa.table({
            "id": pa.array(list(batch["id"]), pa.string()),
            "source": pa.array(list(batch["source"]), pa.string()),
            "label": pa.array(labels, pa.int64(), mask=labels < 0),
            "label_name": pa.array([self.classes[i] if i >= 0 else None for i in labels], pa.string()),
            "pred": pa.array(np.where(ok, idx[:, 0], -1), pa.int64()),
            "pred_name": pa.array([self.classes[i] if o else None for i, o in zip(idx[:, 0], ok)], pa.string()),
            "prob": pa.array(np.where(ok, probs[:, 0], np.nan), pa.float32()),
            "topk": pa.array([list(map(int, r)) for r in idx], pa.list_(pa.int64())),
            "topk_names": pa.array([[self.classes[i] for i in r] for r in idx], pa.list_(pa.string())),
            "topk_probs": pa.array([list(map(float, r)) for r in probs], pa.list_(pa.float32())),
            "error": pa.array(list(batch.get("error", [""] * len(labels))), pa.string()),
        })


def _pool_args(concurrency: int | None) -> dict:
    """One actor per GPU where there are GPUs (num_gpus=1 each), else `concurrency` CPU actors."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return {"compute": ActorPoolStrategy(size=concurrency or gpus), "num_gpus": 1}
    return {"compute": ActorPoolStrategy(size=concurrency or 1), "num_cpus": 1}


def predict_dataset(ds, model, *, top_k: int = 5, batch_size: int = 64, concurrency: int | None = None):
    """A Ray dataset of uint8 crops (image, label, id, source) -> a Ray dataset of predictions."""
    ref = ray.put((model.spec, {k: v.detach().cpu() for k, v in model.net.state_dict().items()}))
    return ds.map_batches(Predictor, fn_constructor_kwargs={"model_ref": [ref], "top_k": top_k},
                          batch_size=batch_size, batch_format="numpy", **_pool_args(concurrency))


def read_images(data: str | os.PathLike, model, *, split: str | None = None, crop: int, resize: int):
    """A dataset directory (dataset.json) or an image folder -> Ray dataset of uint8 crops.

    In an image folder, an image under a directory named like one of the model's classes gets
    that class as its label; others have none."""
    data = storage.absolute(data)  # Ray tasks read the files, in their own working folder
    check_shared(data, "--data")  # ... on every node
    root = Path(data)
    preset = ValPreset(crop=crop, resize=resize)
    if storage.is_uri(str(data)) or (root / INFO_FILE).is_file():  # a dataset, local or at a URI
        info = load_info(str(data))
        splits = [split] if split else list(info.shards)
        paths = [p for s in splits for p in info.shard_paths(s)]
        if not paths:
            raise UserError(f"--data {data}: no shards for split {split!r}; it has {', '.join(info.shards)}")
        ds = read_shards(paths, ["id", "image", "label", "source", "height", "width"])
        if list(info.classes) != list(model.classes):
            ds = ds.map_batches(_relabel, fn_kwargs={"mapping": _label_map(info.classes, model.classes)},
                                batch_format="numpy")
    elif root.is_dir():
        files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise UserError(f"--data {root}: no dataset.json and no image files ({', '.join(IMAGE_EXTENSIONS)})")
        index = {name: i for i, name in enumerate(model.classes)}
        labels = [index.get(Path(f).parent.name, -1) for f in files]
        ds = ray.data.from_items([{"path": f, "label": y} for f, y in zip(files, labels)])
        ds = ds.map_batches(_read_files, batch_format="numpy")
        return ds.map_batches(_preprocess, fn_kwargs={"preset": preset, "source_files": True}, batch_format="numpy",
                              batch_size=64)
    else:
        raise UserError(f"--data {root}: not a directory")
    return ds.map_batches(_preprocess, fn_kwargs={"preset": preset}, batch_format="numpy", batch_size=64)


def _read_files(batch: dict) -> dict:
    """Each file's bytes (a regular file within MAX_IMAGE_BYTES), or why it was not read."""
    blobs, problems = [], []
    for path in batch["path"]:
        try:
            blobs.append(storage.read_bytes(storage.locate(path), limit=MAX_IMAGE_BYTES))
            problems.append("")
        except OSError as err:
            blobs.append(b"")
            problems.append(f"unreadable: {err.strerror or err}")
    return {"id": np.asarray([hashlib.sha256(b).hexdigest() for b in blobs], dtype=object),
            "image": np.asarray(blobs, dtype=object), "source": batch["path"], "label": batch["label"],
            "read_error": np.asarray(problems, dtype=object)}


def _label_map(dataset_classes: list[str], model_classes: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(model_classes)}
    return np.asarray([index.get(name, -1) for name in dataset_classes], dtype=np.int64)


def _relabel(batch: dict, *, mapping: np.ndarray) -> dict:
    """The dataset's label numbers -> the model's (by class name); unknown classes -> -1."""
    return {**batch, "label": mapping[np.asarray(batch["label"], dtype=np.int64)]}


def scores(table: pa.Table) -> Scores:
    """Top-1/top-5 over the rows that have a label and a readable image."""
    labels = np.asarray(table.column("label").fill_null(-1).to_numpy(), dtype=np.int64)
    errors = np.asarray(table.column("error").to_pylist(), dtype=object)
    keep = (labels >= 0) & (errors == "")
    topk = table.column("topk").to_pylist()
    hits1 = sum(1 for y, t, k in zip(labels, topk, keep) if k and t[:1] == [y])
    hits5 = sum(1 for y, t, k in zip(labels, topk, keep) if k and y in t[:5])
    n = int(keep.sum())
    return Scores(n, hits1 / n if n else float("nan"), hits5 / n if n else float("nan"))


def write_predictions(preds, out: str | os.PathLike) -> pa.Table:
    """Write the prediction dataset as Parquet under `out`, atomically: a temp directory next to
    it, renamed into place once complete. Returns the (label, topk, error) columns for scoring."""
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not empty; choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        preds.write_parquet(str(tmp))
        table = pq.read_table(str(tmp), columns=["label", "topk", "error"])
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return table


def evaluate(model, info, *, ten_crop: bool = False, concurrency: int | None = None,
             crop: int | None = None, resize: int | None = None) -> tuple[Scores, np.ndarray, np.ndarray]:
    """A model on a dataset's val split -> (scores, labels, top-1 predictions), in the model's
    label numbering. Ten-crop averages the softmax of pipelines' 10 crops per image (class_probs).
    A split small enough (`_small`) is scored in this process, a larger one by Ray Data with the
    model in an actor pool (on the GPUs where there are some)."""
    if list(info.classes) != list(model.classes):
        raise UserError(f"--data {info.path}: its classes differ from the model's "
                        f"({len(info.classes)} vs {len(model.classes)}); evaluate needs the same class list")
    crop, resize = geometry(model, crop, resize)
    if _small(info.split_size("val"), crop, ten_crop):
        table = _score_here(model, info, crop=crop, resize=resize, ten_crop=ten_crop)
    else:
        check_shared(str(info.path), "--data")  # Ray tasks on every node read its shards
        ds = val_dataset(info, crop=crop, resize=resize, ten_crop=ten_crop)
        ds = ds.map_batches(_add_columns, batch_format="numpy")
        preds = predict_dataset(ds, model, top_k=5, concurrency=concurrency).select_columns(["label", "topk", "error"])
        table = pa.concat_tables(preds.iter_batches(batch_format="pyarrow", batch_size=None))
    labels = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    top1 = np.asarray([t[0] for t in table.column("topk").to_pylist()], dtype=np.int64)
    return scores(table), labels, top1


# A Ray Data execution with a model actor takes ~10 s to start on 2 CPUs (the actor imports torch
# and receives the weights); the driver scores 2,048 crops of 64 px in less, on one core.
LOCAL_SCORING_MAX_PIXELS = 2048 * 64 * 64


def _small(images: int, crop: int, ten_crop: bool) -> bool:
    """Whether scoring the split here costs less than starting the actor pool: a budget of crop
    pixels, so a 224 px split (12x the pixels of 64 px ones) or ten crops (10x) qualify only when
    that much smaller."""
    return images * (10 if ten_crop else 1) * crop * crop <= LOCAL_SCORING_MAX_PIXELS


def _score_here(model, info, *, crop: int, resize: int, ten_crop: bool) -> pa.Table:
    """The (label, topk, error) table `scores` reads, computed in this process on its CPU."""
    model = model.eval()
    labels, topk = [], []
    with torch.inference_mode():
        for batch in val_batches_here(info, crop=crop, resize=resize, ten_crop=ten_crop, batch_rows=64):
            probs = class_probs(model, torch.from_numpy(np.ascontiguousarray(batch["image"])))
            topk.append(probs.topk(min(5, probs.shape[1]), dim=1).indices.numpy())
            labels.append(np.asarray(batch["label"], dtype=np.int64))
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    top = np.concatenate(topk) if topk else np.zeros((0, 5), np.int64)
    return pa.table({"label": pa.array(labels, pa.int64()),
                     "topk": pa.array([list(map(int, r)) for r in top], pa.list_(pa.int64())),
                     "error": pa.array([""] * len(labels), pa.string())})


def _add_columns(batch: dict) -> dict:
    n = len(batch["label"])
    ids = batch.get("id", np.asarray([""] * n, dtype=object))
    return {**batch, "id": ids, "source": np.asarray([""] * n, dtype=object), "error": np.asarray([""] * n, dtype=object)}
