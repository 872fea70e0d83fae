"""Training augmentation split across the cluster: plans on the Ray Data CPU workers, pixels on
the train worker's GPU (`data.decode: gpu`).

When CPUs cannot decode JPEGs as fast as the GPUs train (8 GPUs on a node with a few dozen
cores), the CPU side only reads the Parquet rows and draws each image's random choices
(`TrainPreset.plans`, from the stored width and height, no decoding), and the train worker
decodes the batch with nvJPEG and crops, flips and lights it with torch on its own device.
The random choices are the same function of (seed, epoch, image id) as on the CPU path, so a
run's augmentation does not depend on where it was executed.

The device work is batched, so that its host cost is a few dozen kernel launches per batch, not
several per image:
- the encoded bytes reach the decoder as views of the batch's own memory (an Arrow binary
  column's data buffer, cut at its offsets), no Python bytes object per image;
- one decode call for the batch's JPEGs (nvJPEG on CUDA, libjpeg-turbo elsewhere); PNG and raw
  rows, which ingest writes only on request, are decoded on the host by `decode_stored`;
- one resample for every image's own crop box and scale, as two batched matrix products
  (horizontal, then vertical) of per-image weight matrices with a canvas that holds each
  image's source window (the pixels its crop reads), padded to the largest; the horizontal
  weights are mirrored for flipped images, so the flip costs nothing;
- per-image numbers (labels, the weights' parameters, lighting shifts) reach the device in one
  pinned, non-blocking copy.

Pixels: the weights, roundings and order of passes are those of torch's uint8 antialiased
bilinear resize (aten's fixed-point weights, as PIL's BILINEAR), which the CPU path uses. On the
CPU device, where the products run in float64, the pixels are therefore the CPU path's exactly,
except where the CPU path decodes a JPEG at a reduced DCT scale (the paper's crop of an image
stored at >= 2x data.resize; the device path always decodes full size). On CUDA the products run
in float16 (exact levels, approximate weights) and nvJPEG upsamples chroma differently from
libjpeg: the pixels differ by a few levels (tests/read/test_loader.py states the bound).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyarrow as pa

from pipelines.decode import MAX_IMAGE_PIXELS, ImageDecodeError, decode_stored
from pipelines.imports import import_whole
from pipelines.read.augment import PLAN_FIELDS, TrainPreset, image_keys, lighting_shift

# Pixels (images x window height x window width) in one resampling canvas: at most ~0.6 GB on
# CUDA (its uint8 and float16 copies, three channels), one canvas for a batch of 256 windows of
# up to 512 x 512. A batch over it is resampled in chunks of similar window sizes; an image whose
# own window is larger gets a chunk to itself.
CANVAS_PIXELS = 1 << 26

# The per-image parameters sent to the device in one copy, as one float64 buffer (integers below
# 2^53 are exact): N rows of image columns, then 2N rows of axis columns (the N images' vertical
# axes, then their horizontal ones).
_LABEL, _HEIGHT, _WIDTH, _BASE, _SHIFT = 0, 1, 2, 3, slice(4, 7)
_IMAGE_COLUMNS = 7
# Per axis (see `_axis`): window origin in the decoded image, window size, filter scale, first
# output of the crop in the resize's outputs, length of the clamping range, the window's offset
# in that range, the resize's output count, and the mirror flag (horizontal axes only).
_ORIGIN, _SIZE, _SCALE, _START, _LENGTH, _FIRST, _OUTPUTS, _FLIP = range(8)
_AXIS_COLUMNS = 8


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


def augment_on_device(batch, preset: TrainPreset, device) -> dict:
    """A planned batch -> {"image": uint8 (N, 3, crop, crop), "label": int64 (N,)} on `device`.

    `batch` is one batch of plan_batch's rows as Ray Data hands it over: a `pyarrow.Table`
    (`iter_batches(batch_format="pyarrow")`, the fast form: no Python object per image) or a
    dict of numpy arrays. On a CUDA device the work is queued on the current stream; the call
    returns once nvJPEG is done (it synchronises its own stream), before the resample is. On
    the "meta" device nothing is decoded or computed (shapes only)."""
    torch = import_whole("torch")
    device = torch.device(device)
    images, jpeg = _encoded(_column(batch, "image"))
    n = len(images)
    plans = _plans(_column(batch, "plan"), n)
    heights = np.asarray(_column(batch, "height")).astype(np.int64)
    widths = np.asarray(_column(batch, "width")).astype(np.int64)
    labels = np.asarray(_column(batch, "label")).astype(np.int64)
    _check_pixels(heights, widths)
    decoded = _decode(images, jpeg, heights, widths, device)
    shapes = np.array([t.shape for t in decoded], dtype=np.int64).reshape(n, 3)
    _check_pixels(shapes[:, 1], shapes[:, 2])
    per_image, axes = _parameters(plans, labels, shapes[:, 1], shapes[:, 2], preset)
    host = torch.from_numpy(np.concatenate([per_image.ravel(), axes.ravel()]))
    if device.type == "cuda":
        host = host.pin_memory()
    params = host.to(device, non_blocking=True)  # the batch's only copy to the device besides the pixels
    image_params = params[:n * _IMAGE_COLUMNS].view(n, _IMAGE_COLUMNS)
    axis_params = params[n * _IMAGE_COLUMNS:].view(2, n, _AXIS_COLUMNS)
    pad = int(axes[1, :, _SIZE].max(initial=1))  # a canvas row reads this many bytes from its start
    flat = torch.empty(int(shapes.prod(axis=1).sum()) + pad, dtype=torch.uint8, device=device)
    if n:
        torch.cat([t.reshape(-1) for t in decoded], out=flat[:flat.numel() - pad])
    chunks = _chunks(axes[0, :, _SIZE], axes[1, :, _SIZE])
    if chunks is None:  # the whole batch in one canvas (the usual case)
        out = _resample(flat, image_params, axis_params, axes, preset)
    else:
        out = torch.empty((n, 3, preset.crop, preset.crop), dtype=torch.uint8, device=device)
        for rows in chunks:
            index = torch.as_tensor(rows, device=device)
            out.index_copy_(0, index, _resample(flat, image_params.index_select(0, index),
                                                axis_params.index_select(1, index), axes[:, rows], preset))
    return {"image": out, "label": image_params[:, _LABEL].long()}


# --- host side: the batch's columns ------------------------------------------------------------

def _column(batch, name: str):

    if isinstance(batch, pa.Table):
        return batch.column(name)
    return batch[name]


def _plans(column, rows: int) -> np.ndarray:
    """The plan column -> float64 (rows, len(PLAN_FIELDS)), from a numpy 2-D array or an Arrow
    column of lists (Ray Data's tensor extension type stores the (N, 10) float32 so)."""
    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        column = [np.asarray((c.storage if isinstance(c, pa.ExtensionArray) else c).flatten()) for c in chunks]
        column = np.concatenate(column) if column else np.zeros(0)
    return np.asarray(column, dtype=np.float64).reshape(rows, len(PLAN_FIELDS))


def _encoded(column) -> tuple[list, np.ndarray]:
    """The image column -> (one uint8 CPU tensor per row viewing the column's own memory, whether
    each row is a JPEG). An Arrow binary column is viewed in place (one tensor per data buffer,
    then `split` by the offsets); a numpy column of bytes objects is joined into one buffer first."""
    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        views, jpeg = [], []
        for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]):
            if chunk.null_count:
                raise ValueError("image column: a row holds no image (null)")
            kind = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
            _, offsets, data = chunk.buffers()
            offsets = np.frombuffer(offsets, dtype=kind)[chunk.offset:chunk.offset + len(chunk) + 1]
            v, j = _split(data, offsets.astype(np.int64))
            views += v
            jpeg.append(j)
        return views, np.concatenate(jpeg) if jpeg else np.zeros(0, dtype=bool)
    items = list(column)
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    return _split(b"".join(items), np.concatenate([[0], np.cumsum(lengths)]))


_quiet = False


def _split(buffer, offsets: np.ndarray) -> tuple[list, np.ndarray]:
    """Rows [offsets[i], offsets[i+1]) of `buffer` as uint8 tensor views, and their JPEG magic."""
    global _quiet
    torch = import_whole("torch")

    start, end = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    if end == start:
        return list(torch.empty(0, dtype=torch.uint8).split(lengths.tolist())), np.zeros(len(lengths), dtype=bool)
    if not _quiet:  # Ray's Arrow buffers are read-only (the object store); the decoders only read them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        _quiet = True
    raw = np.frombuffer(buffer, dtype=np.uint8, count=end - start, offset=start)
    data = torch.from_numpy(raw)
    first = offsets[:-1] - start
    long_enough = lengths >= 3
    at = np.where(long_enough, first, 0)
    jpeg = long_enough & (raw[at] == 0xFF) & (raw[np.minimum(at + 1, len(raw) - 1)] == 0xD8) & (
        raw[np.minimum(at + 2, len(raw) - 1)] == 0xFF)
    return list(data.split(lengths.tolist())), jpeg


def _check_pixels(heights: np.ndarray, widths: np.ndarray) -> None:
    """The decoders' pixel limit, from the stored sizes before decoding (ingest wrote them from the
    decoded image; a header parse per image would cost more than the rest of this path) and from
    the decoded sizes after."""
    over = np.flatnonzero(heights * widths > MAX_IMAGE_PIXELS)
    if len(over):
        i = int(over[0])
        raise ImageDecodeError(f"too large: row {i} of the batch is {widths[i]}x{heights[i]} px, over the limit of "
                               f"{MAX_IMAGE_PIXELS} pixels (pipelines.decode.MAX_IMAGE_PIXELS)")


def _decode(images: list, jpeg: np.ndarray, heights: np.ndarray, widths: np.ndarray, device) -> list:
    """Each row as uint8 (3, H, W) on `device`, in row order: the JPEGs in one decode call."""
    torch = import_whole("torch")

    if device.type == "meta":  # shapes only: each image's output at its stored size
        return [torch.empty((3, int(h), int(w)), dtype=torch.uint8, device=device) for h, w in zip(heights, widths)]
    out: list = [None] * len(images)
    rows = np.flatnonzero(jpeg).tolist()
    if rows:
        tvio = import_whole("torchvision.io")
        decoded = tvio.decode_jpeg([images[i] for i in rows] if len(rows) < len(images) else images,
                                   mode=tvio.ImageReadMode.RGB, device=device)  # CUDA: one nvJPEG batch, synchronised
        for i, t in zip(rows, decoded):
            out[i] = t
    for i in np.flatnonzero(~jpeg).tolist():
        pixels = decode_stored(images[i].numpy(), height=int(heights[i]), width=int(widths[i]))
        out[i] = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    return out


def _parameters(plans: np.ndarray, labels: np.ndarray, heights: np.ndarray, widths: np.ndarray,
                preset: TrainPreset) -> tuple[np.ndarray, np.ndarray]:
    """What the device needs per image: float64 (N, _IMAGE_COLUMNS) and (2, N, _AXIS_COLUMNS)."""
    n = len(plans)
    image = np.zeros((n, _IMAGE_COLUMNS), dtype=np.float64)
    image[:, _LABEL], image[:, _HEIGHT], image[:, _WIDTH] = labels, heights, widths
    image[:, _BASE] = np.concatenate([[0], np.cumsum(3 * heights * widths)[:-1]]) if n else 0
    if preset.pca_lighting > 0:
        image[:, _SHIFT] = np.clip(np.rint(lighting_shift(preset.eigval, preset.eigvec, plans[:, 7:10])), -255, 255)
    axes = np.stack([_axis(heights, plans[:, 1], plans[:, 3], plans[:, 5], preset),
                     _axis(widths, plans[:, 0], plans[:, 2], plans[:, 4], preset)])
    axes[1, :, _FLIP] = plans[:, 6]
    return image, axes


def _axis(decoded: np.ndarray, scaled: np.ndarray, lo: np.ndarray, hi: np.ndarray, preset: TrainPreset) -> np.ndarray:
    """One axis of every image's resample, as torch's antialiased bilinear resize does it (aten's
    _compute_indices_min_size_weights_aa): output i of a range of `length` input samples is
    centred at scale * (i + 0.5) and reads the inputs within `support` = max(scale, 1) of it,
    clamped to the range. The paper's crop resizes the whole decoded image to the plan's size
    and keeps outputs [lo, hi): range = the image, first output = lo. RandomResizedCrop resizes
    the plan's box to the crop: range = the box (in decoded pixels), first output = 0. Returns
    (N, _AXIS_COLUMNS); the window [origin, origin + size) holds every input the crop reads."""
    decoded = decoded.astype(np.float64)
    crop = preset.crop
    if preset.random_resized_crop:
        ratio = decoded / np.maximum(scaled, 1)  # 1 unless the stored size columns disagree with the pixels
        base = np.rint(lo * ratio)
        length = np.maximum(1.0, np.rint((hi - lo) * ratio))
        scale, start, outputs = length / crop, np.zeros_like(length), np.full_like(length, crop)
    else:
        base, length, outputs = np.zeros_like(decoded), decoded, scaled
        scale, start = decoded / np.maximum(scaled, 1), lo
    support = np.maximum(scale, 1.0)
    first = np.maximum(np.trunc(scale * (start + 0.5) - support + 0.5), 0)
    last = np.minimum(np.trunc(scale * (start + crop - 0.5) + support + 0.5), length)
    return np.stack([base + first, last - first, scale, start, length, first, outputs, np.zeros_like(scale)], axis=1)


def _chunks(heights: np.ndarray, widths: np.ndarray):
    """Row groups whose canvas (count x tallest window x widest window) stays within
    CANVAS_PIXELS: None (the whole batch, in order) when it fits, else index arrays over the
    windows sorted by size."""
    n = len(heights)
    if n == 0:
        return []
    if n * heights.max() * widths.max() <= CANVAS_PIXELS:
        return None
    order = np.lexsort((widths, heights))
    chunks, start, tall, wide = [], 0, 0.0, 0.0
    for k, i in enumerate(order.tolist()):
        tall, wide = max(tall, heights[i]), max(wide, widths[i])
        if k > start and (k + 1 - start) * tall * wide > CANVAS_PIXELS:
            chunks.append(order[start:k])
            start, tall, wide = k, heights[i], widths[i]
    chunks.append(order[start:])
    return chunks


# --- device side -------------------------------------------------------------------------------

def _resample(flat, image, axis, host_axes: np.ndarray, preset: TrainPreset):
    """The n images in `flat` (described by `image` (n, _IMAGE_COLUMNS) and `axis` (2, n,
    _AXIS_COLUMNS) on the device, `host_axes` the same axes on the host) -> uint8
    (n, 3, crop, crop): canvas rows gathered from the flat buffer, then
    round(round(canvas @ Wx^T) @ ...) with Wy, lit and clamped, as aten's two uint8 passes."""
    torch = import_whole("torch")

    n, crop, dev = image.shape[0], preset.crop, flat.device
    tall, wide = int(host_axes[0, :, _SIZE].max()), int(host_axes[1, :, _SIZE].max())
    dtype = _compute_dtype(dev)
    # Canvas row (image, window row, channel) = `wide` bytes of `flat` from that row's first window
    # pixel: rows of a view of `flat` as overlapping windows. What a row reads past its image's
    # window (the next row, image or padding) gets a zero weight.
    height, width = image[:, _HEIGHT, None], image[:, _WIDTH, None]
    row = torch.minimum(axis[0, :, _ORIGIN, None] + torch.arange(tall, device=dev, dtype=image.dtype), height - 1)
    plane = torch.arange(3, device=dev, dtype=image.dtype) * (height * width)[..., None]  # (n, 1, 3)
    starts = (image[:, _BASE, None] + row * width + axis[1, :, _ORIGIN, None])[..., None] + plane  # (n, tall, 3)
    canvas = flat.unfold(0, wide, 1).index_select(0, starts.view(-1).long()).view(n, tall * 3, wide).to(dtype)
    weights = _weights(axis.view(2 * n, _AXIS_COLUMNS), int(host_axes[..., _OUTPUTS].max()), crop,
                       max(tall, wide), _taps(host_axes), dtype)
    wy, wx = weights[:n, :, :tall], weights[n:, :, :wide]
    rows = torch.bmm(canvas, wx.transpose(1, 2)).add_(0.5).floor_().clamp_(max=255)  # (n, tall * 3, crop)
    out = torch.bmm(wy, rows.view(n, tall, 3 * crop)).add_(0.5).floor_().view(n, crop, 3, crop)
    if preset.pca_lighting > 0:  # the CPU path adds the rounded shift to the rounded level
        out += image[:, _SHIFT].to(dtype).view(n, 1, 3, 1)
    return out.clamp_(0, 255).permute(0, 2, 1, 3).to(torch.uint8, memory_format=torch.contiguous_format)


def _compute_dtype(device):
    """float16 on CUDA (tensor cores; levels 0..255 exact, weights to 11 bits), float64 elsewhere
    (aten's fixed-point arithmetic reproduced exactly)."""
    torch = import_whole("torch")

    return torch.float16 if device.type == "cuda" else torch.float64


def _taps(axes: np.ndarray) -> int:
    """Inputs per output at most, over the given axes: 2 x support + 1."""
    return int(math.ceil(2 * float(np.maximum(axes[..., _SCALE], 1.0).max(initial=1.0)))) + 1


def _weights(axis, outputs: int, count: int, size: int, taps: int, dtype):
    """(m, count, size) weights of m axes (rows of _AXIS_COLUMNS): output i of the crop reads
    window input j with weight [i, j]. They are aten's for a uint8 resize: float64, normalised,
    then in fixed point at the precision aten derives from the largest weight of the whole resize
    (`outputs` positions, of which the crop takes `count` from _START on). A flipped axis's
    output i takes the weights of output count - 1 - i."""
    torch = import_whole("torch")

    dev, f64 = axis.device, axis.dtype
    scale, length, first = axis[:, _SCALE, None], axis[:, _LENGTH, None], axis[:, _FIRST, None, None]
    i = torch.arange(outputs, device=dev, dtype=f64)
    centre = scale * (i + 0.5)  # (m, outputs), in the range's coordinates
    support = scale.clamp(min=1.0)
    low = (centre - support + 0.5).trunc_().clamp_(min=0)
    high = torch.minimum((centre + support + 0.5).trunc_(), length)
    high *= i < axis[:, _OUTPUTS, None]  # no inputs for positions past this axis's resize
    tap = low[..., None] + torch.arange(taps, device=dev, dtype=f64)  # (m, outputs, taps)
    w = (1 - ((tap - centre[..., None] + 0.5) * (1 / support)[..., None]).abs_()).clamp_(min=0)
    w *= tap < high[..., None]
    w /= w.cumsum(-1)[..., -1:].clamp_(min=1e-12)  # aten sums the taps in order
    # aten's weights_precision: the most fraction bits (<= 22) that keep 2 x the largest weight
    # under 2^15 - 0.5; weights are then rounded to that many bits
    bits = (w.amax(dim=(1, 2))[:, None] * torch.exp2(torch.arange(1, 23, device=dev, dtype=f64)) < 32767.5).sum(1)
    unit = torch.exp2(bits.to(f64))[:, None, None]
    w = w.mul_(unit).add_(0.5).floor_().div_(unit)
    position = torch.arange(count, device=dev, dtype=f64)
    position = torch.where(axis[:, _FLIP, None] > 0, count - 1 - position, position) + axis[:, _START, None]
    pick = position.long()[..., None].expand(-1, -1, taps)  # (m, count, taps)
    column = (tap.gather(1, pick) - first).clamp_(0, size - 1).long()
    return torch.zeros((axis.shape[0], count, size), dtype=dtype, device=dev).scatter_add_(
        2, column, w.gather(1, pick).to(dtype))
