"""Training augmentation split across the cluster: plans on the Ray Data CPU workers, pixels on
the train worker's GPU (`data.decode: gpu`).

When CPUs cannot decode JPEGs as fast as the GPUs train (8 GPUs on a node with a few dozen
cores), the CPU side only reads the Parquet rows and draws each image's random choices
(`TrainPreset.plans`, from the stored width and height, no decoding), and the train worker
decodes the batch with nvJPEG and crops, flips and lights it with torch on its own device.
The random choices are the same function of (seed, epoch, image id) as on the CPU path, so a
run's augmentation does not depend on where it was executed.

The device work is batched, so its host cost does not grow with kernel launches per image:
- the encoded bytes reach the decoder as views of the batch's own buffer (an Arrow binary
  column's data buffer, sliced by its offsets), no Python bytes object per image;
- one decode call for the batch's JPEGs (nvJPEG on CUDA, libjpeg-turbo elsewhere); PNG and raw
  rows, which ingest writes only on request, are decoded on the host by `decode_stored`;
- one resample for every image's own crop box and scale: each output pixel is the
  antialiased bilinear filter that torch's `interpolate(antialias=True)` (the CPU path's resize,
  PIL's BILINEAR) applies, written as two batched matrix products with per-image weights over a
  canvas that holds each image's source window (the pixels its crop reads) padded to the
  largest window; the horizontal weights are mirrored for flipped images, so the flip is free;
- per-image numbers (labels, weights' parameters, lighting shifts) reach the device in one
  pinned, non-blocking copy.

Pixels equal the CPU path's within RESAMPLE_TOLERANCE: the CPU path resizes in 8-bit fixed point
with a rounding between its two passes, this one in floating point (and on CUDA, nvJPEG
upsamples chroma differently from libjpeg: see tests/test_loader.py).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from pipelines.augment import PLAN_FIELDS, TrainPreset, image_keys, lighting_shift
from pipelines.decode import MAX_IMAGE_PIXELS, ImageDecodeError, decode_stored
from pipelines.imports import import_whole

# Pixels (batch images x window height x window width) in one resampling canvas, ~400 MB of
# float32 on the device with its three channels; a batch over it is resampled in chunks of
# similar window sizes, and an image whose own window is larger gets a chunk to itself.
CANVAS_PIXELS = 1 << 25

# |device path - CPU path| per pixel value, on the CPU device, for JPEG, PNG and raw rows
# decoded by the same library: the two resize implementations round differently.
RESAMPLE_TOLERANCE = 1

# Per-image parameters sent to the device in one copy: float64 columns of one array.
_LABEL, _FLIP, _HEIGHT, _WIDTH, _BASE, _SHIFT = 0, 1, 2, 3, 4, slice(5, 8)
# Per axis (y, then x): window origin in the decoded image, window size, filter scale, first
# output position of the crop, length of the clamping range, the window's offset within that
# range, and the resize's output positions (see `_axis`).
_Y, _X = slice(8, 15), slice(15, 22)
_ORIGIN, _SIZE, _SCALE, _START, _LENGTH, _FIRST, _OUTPUTS = range(7)
_COLUMNS = 22


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
    return out


def augment_on_device(batch, preset: TrainPreset, device) -> dict:
    """A planned batch -> {"image": uint8 (N, 3, crop, crop), "label": int64 (N,)} on `device`.

    `batch` is one batch of plan_batch's rows as Ray Data hands it over: a `pyarrow.Table`
    (`iter_batches(batch_format="pyarrow")`, the fast form: no Python object per image) or a
    dict of numpy arrays. On a CUDA device the work is queued on the current stream (it returns
    once nvJPEG is done, before the resample is); the caller synchronises as usual. On the
    "meta" device nothing is decoded or computed (shapes only): the host cost of this function
    alone, as benchmarks/gpu_host_cost.py measures it."""
    torch = import_whole("torch")
    device = torch.device(device)
    images, jpeg = _encoded(_column(batch, "image"))
    plans = _plans(_column(batch, "plan"), len(images))
    heights = _vector(_column(batch, "height")).astype(np.int64)
    widths = _vector(_column(batch, "width")).astype(np.int64)
    labels = _vector(_column(batch, "label")).astype(np.int64)
    _check_pixels(heights, widths)
    decoded = _decode(images, jpeg, heights, widths, device)
    shapes = np.array([t.shape for t in decoded], dtype=np.int64).reshape(-1, 3)
    _check_pixels(shapes[:, 1], shapes[:, 2])
    params = _parameters(plans, labels, shapes[:, 1], shapes[:, 2], preset)
    host = torch.from_numpy(params)
    if device.type == "cuda":
        host = host.pin_memory()
    on_device = host.to(device, non_blocking=True)  # the batch's only host -> device copy besides the pixels
    width = int(params[:, _X][:, _SIZE].max(initial=1))
    flat = torch.empty(int(shapes.prod(axis=1).sum()) + width, dtype=torch.uint8, device=device)
    if decoded:
        torch.cat([t.reshape(-1) for t in decoded], out=flat[:flat.numel() - width])
    chunks = _chunks(params[:, _Y][:, _SIZE], params[:, _X][:, _SIZE])
    if chunks is None:  # the whole batch in one canvas (the usual case)
        out = _resample(flat, on_device, params, preset)
    else:
        out = torch.empty((len(decoded), 3, preset.crop, preset.crop), dtype=torch.uint8, device=device)
        for rows in chunks:
            index = torch.as_tensor(rows, device=device)
            out.index_copy_(0, index, _resample(flat, on_device.index_select(0, index), params[rows], preset))
    return {"image": out, "label": on_device[:, _LABEL].long()}


# --- host side: the batch's columns ------------------------------------------------------------

def _column(batch, name: str):
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        return batch.column(name)
    return batch[name]


def _vector(column) -> np.ndarray:
    return np.asarray(column)


def _plans(column, rows: int) -> np.ndarray:
    """The plan column -> float64 (rows, len(PLAN_FIELDS)), from a numpy 2-D array or an Arrow
    column of lists (Ray Data's tensor extension type stores the (N, 10) float32 so)."""
    import pyarrow as pa

    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        column = [np.asarray((c.storage if isinstance(c, pa.ExtensionArray) else c).flatten()) for c in chunks]
        column = np.concatenate(column) if column else np.zeros(0)
    return np.asarray(column, dtype=np.float64).reshape(rows, len(PLAN_FIELDS))


def _encoded(column) -> tuple[list, np.ndarray]:
    """The image column -> (one uint8 CPU tensor per row viewing the column's own memory, whether
    each row is a JPEG). An Arrow binary column is viewed in place (one tensor per data buffer,
    then `split` by the offsets); a numpy column of bytes objects is joined into one buffer first."""
    import pyarrow as pa

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
                preset: TrainPreset) -> np.ndarray:
    """(N, _COLUMNS) float64: what the device needs per image (exact integers below 2^53)."""
    n = len(plans)
    p = np.zeros((n, _COLUMNS), dtype=np.float64)
    p[:, _LABEL] = labels
    p[:, _FLIP] = plans[:, 6]
    p[:, _HEIGHT], p[:, _WIDTH] = heights, widths
    p[:, _BASE] = np.concatenate([[0], np.cumsum(3 * heights * widths)[:-1]]) if n else 0
    if preset.pca_std > 0:
        p[:, _SHIFT] = np.clip(np.rint(lighting_shift(preset.eigval, preset.eigvec, plans[:, 7:10])), -255, 255)
    p[:, _Y] = _axis(heights, plans[:, 1], plans[:, 3], plans[:, 5], preset)
    p[:, _X] = _axis(widths, plans[:, 0], plans[:, 2], plans[:, 4], preset)
    return p


def _axis(decoded: np.ndarray, scaled: np.ndarray, lo: np.ndarray, hi: np.ndarray, preset: TrainPreset) -> np.ndarray:
    """One axis of every image's resample, as torch's antialiased bilinear resize does it
    (aten's _compute_weights_aa: output i of an input range of `length` samples it around
    centre = scale * (start + i + 0.5), over taps within `support` = max(scale, 1), clamped to
    the range). The paper's crop resizes the whole decoded image to the plan's size and crops
    [lo, hi): range = the image, start = lo. RandomResizedCrop resizes the plan's box to the crop:
    range = the box (in decoded pixels), start = 0. Returns the columns _ORIGIN.._OUTPUTS; the
    window [origin, origin + size) holds every pixel the crop's outputs read."""
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
    return np.stack([base + first, last - first, scale, start, length, first, outputs], axis=1)


def _taps(axis: np.ndarray) -> int:
    """Source samples per output along an axis, at most: 2 * support + 1."""
    return int(math.ceil(2 * float(np.maximum(axis[:, _SCALE], 1.0).max(initial=1.0)))) + 1


def _outputs(axis: np.ndarray) -> int:
    return int(axis[:, _OUTPUTS].max())


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

def _resample(flat, p, host: np.ndarray, preset: TrainPreset):
    """Images (in `flat`, described by the parameter rows `p` on the device and `host`, the same
    rows on the host) -> uint8 (n, 3, crop, crop): canvas rows gathered from the flat buffer,
    then out = Wy @ canvas @ Wx^T per image and channel, rounded, lit and clamped."""
    torch = import_whole("torch")

    n, crop = p.shape[0], preset.crop
    tall, wide = int(host[:, _Y][:, _SIZE].max()), int(host[:, _X][:, _SIZE].max())
    dtype = torch.float16 if flat.device.type == "cuda" else torch.float64  # see RESAMPLE_TOLERANCE
    # Canvas row (image, window row, channel) starts at that row's first window pixel in `flat`;
    # every row is `wide` bytes long, a view of overlapping windows of the flat buffer. What a row
    # reads past its image's window has a zero weight.
    y = torch.arange(tall, device=flat.device, dtype=p.dtype)
    height, width, base = p[:, _HEIGHT, None], p[:, _WIDTH, None], p[:, _BASE, None]
    row = torch.minimum(p[:, _Y][:, _ORIGIN, None] + y, height - 1)  # (n, tall), past the window: any row
    channel = torch.arange(3, device=flat.device, dtype=p.dtype) * (height * width)[..., None]  # (n, 1, 3)
    starts = (base + row * width + p[:, _X][:, _ORIGIN, None])[..., None] + channel  # (n, tall, 3)
    windows = flat.unfold(0, wide, 1).index_select(0, starts.reshape(-1).long())
    pixels = windows.view(n, tall, 3 * wide).to(dtype)
    wy = _weights(p[:, _Y], _outputs(host[:, _Y]), crop, tall, _taps(host[:, _Y]), dtype)
    wx = _weights(p[:, _X], _outputs(host[:, _X]), crop, wide, _taps(host[:, _X]), dtype, flip=p[:, _FLIP])
    cols = torch.bmm(pixels.view(n, tall * 3, wide), wx.transpose(1, 2)).add_(0.5).floor_().clamp_(max=255)  # (n, tall * 3, crop)
    out = torch.bmm(wy, cols.view(n, tall, 3 * crop)).view(n, crop, 3, crop)
    out.add_(0.5).floor_()
    if preset.pca_std > 0:  # the CPU path adds the rounded shift to the rounded level
        out += p[:, _SHIFT].to(dtype).view(n, 1, 3, 1)
    return out.clamp_(0, 255).permute(0, 2, 1, 3).to(torch.uint8, memory_format=torch.contiguous_format)


def _weights(axis, outputs: int, count: int, size: int, taps: int, dtype, flip=None):
    """(n, count, size) resampling weights along one axis (columns: the canvas window). They are
    aten's for the CPU path's uint8 resize: float64, normalised, then fixed point at the precision
    aten derives from the largest weight of the whole resize (`outputs` positions, of which the
    crop takes `count` from _START on). With `flip` (per image, 0/1) output i takes the weights
    of output count - 1 - i: the horizontal mirror."""
    torch = import_whole("torch")

    dev, f64 = axis.device, axis.dtype
    scale, length, first = axis[:, _SCALE, None], axis[:, _LENGTH, None], axis[:, _FIRST, None, None]
    i = torch.arange(outputs, device=dev, dtype=f64)
    centre = scale * (i + 0.5)  # (n, outputs), in the range's coordinates
    support = scale.clamp(min=1.0)
    low = (centre - support + 0.5).trunc().clamp_(min=0)
    high = torch.minimum((centre + support + 0.5).trunc(), length)
    tap = low[..., None] + torch.arange(taps, device=dev, dtype=f64)  # (n, outputs, taps)
    w = (1 - ((tap - centre[..., None] + 0.5) * (1 / support)[..., None]).abs()).clamp_(min=0) * (tap < high[..., None])
    w /= w.cumsum(-1)[..., -1:].clamp_(min=1e-12)  # aten sums the taps in order
    w *= (i < axis[:, _OUTPUTS, None])[..., None]  # positions past this image's resize
    # aten's weights_precision: the most fraction bits that keep 2 x the largest weight under 2^15
    powers = 2.0 ** torch.arange(1, 23, device=dev, dtype=f64)
    unit = (2.0 ** ((0.5 + w.amax(dim=(1, 2))[:, None] * powers).trunc() < 2 ** 15).sum(1).to(f64))[:, None, None]
    w = (w * unit + 0.5).floor_() / unit
    position = torch.arange(count, device=dev, dtype=f64)
    if flip is not None:
        position = torch.where(flip[:, None] > 0, count - 1 - position, position)
    pick = (axis[:, _START, None] + position).long()[..., None].expand(-1, -1, taps)  # (n, count, taps)
    column = (tap.gather(1, pick) - first).clamp_(0, size - 1).long()
    return torch.zeros((axis.shape[0], count, size), dtype=dtype, device=dev).scatter_add_(
        2, column, w.gather(1, pick).to(dtype))
