"""Training augmentation split across the cluster: plans on the Ray Data CPU workers, pixels on
the train worker's GPU (`data.decode: gpu`).

When CPUs cannot decode JPEGs as fast as the GPUs train (8 GPUs on a node with a few dozen
cores), the CPU side only reads the Parquet rows and draws each image's random choices
(`TrainPreset.plans`, from the stored width and height, no decoding), and the train worker
decodes the batch with nvJPEG and crops, flips and lights it with torch on its own device.
The random choices are the same function of (seed, epoch, image id) as on the CPU path, so a
run's augmentation does not depend on where it was executed; pixel values can differ by the
rounding of the two resize and lighting implementations.
"""

from __future__ import annotations

import numpy as np

from pipelines.augment import TrainPreset, image_keys, lighting_shift, resize_chw, stored_dim
from pipelines.decode import decode_jpeg_batch, decode_stored, is_jpeg


def plan_batch(batch: dict, *, preset: TrainPreset, seed: int | None, epoch: int = 0, keep_key: bool = False) -> dict:
    """apply_preset's counterpart for `data.decode: gpu`: stored rows -> `image` (the encoded bytes,
    untouched), `label`, `plan` (float32, one PLAN_FIELDS row per image), `height`, `width`, and
    `key` (as in apply_preset) when `keep_key`."""
    keys = image_keys(batch["id"])
    plans = preset.plans(batch["width"], batch["height"], keys, seed=seed, epoch=epoch).astype(np.float32)
    out = {"image": batch["image"], "label": np.asarray(batch["label"], dtype=np.int64), "plan": plans,
           "height": batch["height"], "width": batch["width"]}  # raw pixels need their shape
    if keep_key:
        out["key"] = keys.astype(np.int64)
        out["epoch"] = np.full(len(keys), epoch, dtype=np.int64)
    return out


def augment_on_device(batch: dict, preset: TrainPreset, device) -> dict:
    """A planned numpy batch -> {"image": uint8 (N, 3, crop, crop), "label": int64} on `device`.
    JPEGs are decoded in one nvJPEG call on a CUDA device (libjpeg otherwise); PNG and raw rows
    are decoded by PIL on the host and copied over. Crops (and resizes) are per image, as the
    images differ in size; flips and lighting then run once for the whole batch (a per-channel
    shift commutes with a mirror, so the result is the per-image order's)."""
    import torch

    images = _decode_all(batch, device)
    plans = np.asarray(batch["plan"], dtype=np.float64)
    out = torch.empty((len(images), 3, preset.crop, preset.crop), dtype=torch.uint8, device=device)
    for i, (img, plan) in enumerate(zip(images, plans)):
        width, height = int(plan[0]), int(plan[1])
        x = img
        if (x.shape[1], x.shape[2]) != (height, width):  # the paper's crop upscales small images first
            x = resize_chw(x, height, width)
        left, top, right, bottom = (int(v) for v in plan[2:6])
        x = x[:, top:bottom, left:right]
        out[i] = resize_chw(x, preset.crop, preset.crop) if preset.random_resized_crop else x
    flipped = np.flatnonzero(plans[:, 6])
    if len(flipped):
        index = torch.as_tensor(flipped, device=device)
        out[index] = out[index].flip(-1)
    if preset.pca_std > 0:
        shifts = lighting_shift(preset.eigval, preset.eigvec, plans[:, 7:10])  # (N, 3), one matmul
        shift = torch.as_tensor(shifts, dtype=torch.float32).to(device, non_blocking=True).view(-1, 3, 1, 1)
        out = (out.float() + shift).round_().clamp_(0, 255).to(torch.uint8)
    labels = torch.tensor(np.asarray(batch["label"], dtype=np.int64), device=device)  # a copy: Ray's arrays are read-only
    return {"image": out, "label": labels}


def _decode_all(batch: dict, device) -> list:
    """Each row's image as a uint8 (3, H, W) tensor on `device`, in row order."""
    import torch

    data = list(batch["image"])
    jpeg = [i for i, b in enumerate(data) if is_jpeg(b)]
    images: list = [None] * len(data)
    for i, t in zip(jpeg, decode_jpeg_batch([bytes(data[i]) for i in jpeg], str(device)) if jpeg else []):
        images[i] = t
    for i, b in enumerate(data):
        if images[i] is None:
            pixels = decode_stored(b, height=stored_dim(batch, "height", i), width=stored_dim(batch, "width", i))
            images[i] = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    return images
