"""`alexnet ingest` on real files: every source type and image format, bad input, appends."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.support import cli_here, png_header_only
from pipelines.dataset import SCHEMA, load_info, open_dataset
from pipelines.errors import UserError
from pipelines.ingest import IngestOptions, ingest, split_for
from pipelines.ingest.sources import list_source

OPTS = IngestOptions(resize=48, min_side=16, val_fraction=0.25)


def _alexnet(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=timeout)


def _noise(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    return img if mode == "RGB" else img.convert(mode)


def _rows(dest: Path) -> list[dict]:
    info = load_info(dest)
    rows = []
    for split in ("train", "val"):
        for shard in info.shard_paths(split):
            rows += [dict(r, split=split) for r in pq.read_table(shard).to_pylist()]
    return rows


def _folder(root: Path, classes=("cat", "dog"), n=4, size=(64, 48), seed=0) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _noise(*size, seed=seed * 1000 + c * 100 + i).save(root / name / f"{i}.jpg", quality=90)
    return root


def test_every_format_and_mode_becomes_rgb_with_exif_applied(ray_local, tmp_path):
    src = tmp_path / "src"
    a, b = src / "a", src / "b"
    a.mkdir(parents=True), b.mkdir()
    _noise(64, 48, 1).save(a / "rgb.jpg")
    _noise(64, 48, 2, "L").save(a / "gray.png")
    _noise(64, 48, 3, "P").save(a / "palette.gif")
    _noise(64, 48, 4, "CMYK").save(a / "cmyk.jpg")
    rgba = _noise(64, 48, 5).convert("RGBA")
    rgba.putalpha(0)  # fully transparent: must come out white, not the hidden colours
    rgba.save(b / "alpha.png")
    _noise(64, 48, 6).save(b / "x.webp")
    _noise(64, 48, 7).save(b / "x.bmp")
    _noise(64, 48, 8).save(b / "x.tiff")
    frames = [_noise(64, 48, 9, "P"), _noise(64, 48, 10, "P")]
    frames[0].save(b / "anim.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a 64x48 landscape file is a 48x64 portrait photo
    _noise(64, 48, 11).save(b / "rotated.jpg", exif=exif)

    s = ingest(src, tmp_path / "ds", IngestOptions(resize=None, min_side=16, val_fraction=0.0))
    assert s.added == 10 and not s.rejects
    rows = {Path(r["source"]).name: r for r in _rows(tmp_path / "ds")}
    for name, r in rows.items():
        img = Image.open(io.BytesIO(r["image"]))
        assert img.mode == "RGB", name
        assert (img.width, img.height) == (r["width"], r["height"]), name
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (48, 64)
    assert (rows["rgb.jpg"]["width"], rows["rgb.jpg"]["height"]) == (64, 48)
    white = np.asarray(Image.open(io.BytesIO(rows["alpha.png"]["image"])))
    assert white.min() >= 250
    assert rows["rgb.jpg"]["image"] == (a / "rgb.jpg").read_bytes()  # fits already: bytes kept
    assert rows["cmyk.jpg"]["image"] != (a / "cmyk.jpg").read_bytes()  # CMYK re-encoded as RGB
    assert {r["label_name"]: r["label"] for r in rows.values()} == {"a": 0, "b": 1}


def test_dataset_layout_metadata_and_deterministic_split(ray_local, tmp_path):
    src = _folder(tmp_path / "src", classes=("ant", "bee", "cow"), n=12)
    dest = tmp_path / "ds"
    s = ingest(src, dest, OPTS)
    info = open_dataset(dest)
    assert info.classes == ["ant", "bee", "cow"] and info.schema_version == 1
    assert s.added == 36 == info.num_images
    assert sorted(os.listdir(dest)) == ["dataset.json", "duplicates.csv", "rejects.csv", "train", "val"]
    for split in ("train", "val"):
        for shard in info.shard_paths(split):
            assert pq.read_schema(shard).equals(SCHEMA, check_metadata=False)
    for shard in info.shard_paths("train"):  # content-id order (classes mixed), not the source's order
        ids = pq.read_table(shard, columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids)
    rows = _rows(dest)
    for r in rows:
        assert r["split"] == split_for(r["id"], 0.25)
        assert min(r["height"], r["width"]) == 48
        assert info.classes[r["label"]] == r["label_name"]
    assert {r["split"]: 1 for r in rows}.keys() == {"train", "val"}
    meta = json.loads((dest / "dataset.json").read_text())
    assert {"schema_version", "classes", "counts", "pixel_mean", "pixel_std", "pca_eigval", "pca_eigvec",
            "params", "version"} <= set(meta)
    assert meta["params"]["resize"] == 48 and meta["params"]["source_type"] == "folder"
    # Uniform noise: mean ~0.5, std below 0.29 once JPEG and resizing smooth it; orthonormal eigenvectors.
    assert np.allclose(meta["pixel_mean"], 0.5, atol=0.03) and all(0.15 < s < 0.3 for s in meta["pixel_std"])
    vecs = np.asarray(meta["pca_eigvec"])
    assert np.allclose(vecs.T @ vecs, np.eye(3), atol=1e-6)
    assert meta["pca_eigval"] == sorted(meta["pca_eigval"], reverse=True)


def test_append_only_new_images_and_duplicates_counted_once(ray_local, tmp_path):
    src = _folder(tmp_path / "src", n=6)
    dest = tmp_path / "ds"
    first = ingest(src, dest, OPTS)
    shards = load_info(dest).shards
    again = ingest(src, dest, OPTS)
    assert (again.added, again.new_shards, again.already_present) == (0, 0, 12)
    assert again.version == first.version and load_info(dest).shards == shards
    split_of = {r["id"]: r["split"] for r in _rows(dest)}

    _folder(tmp_path / "src", n=9, seed=0)  # 3 more per class (same seed: the first 6 are unchanged)
    (src / "dog" / "copy-of-0.jpg").write_bytes((src / "cat" / "0.jpg").read_bytes())
    (src / "cat" / "twin-a.jpg").write_bytes((src / "cat" / "7.jpg").read_bytes())
    third = ingest(src, dest, OPTS)
    assert (third.added, third.already_present, third.duplicates) == (6, 13, 1)
    assert third.new_shards >= 1 and third.version != first.version
    assert third.previous_version == first.version
    rows = _rows(dest)
    assert len(rows) == len({r["id"] for r in rows}) == 18
    assert all(split_of[r["id"]] == r["split"] for r in rows if r["id"] in split_of)  # nothing moved
    dup = list(csv.reader(open(dest / "duplicates.csv")))
    assert len(dup) == 2 and {Path(p).name for p in dup[1]} == {"twin-a.jpg", "7.jpg"}
    assert open_dataset(dest).num_images == 18


def test_imagenet_style_splits_are_kept(ray_local, tmp_path):
    _folder(tmp_path / "src" / "train", n=5)
    _folder(tmp_path / "src" / "val", n=2, seed=7)
    s = ingest(tmp_path / "src", tmp_path / "ds", OPTS)
    assert {k: sum(v.values()) for k, v in s.counts.items()} == {"train": 10, "val": 4}
    for r in _rows(tmp_path / "ds"):
        assert f"/{r['split']}/" in r["source"]


@pytest.mark.parametrize("fmt", ["png", "raw"])
def test_png_and_raw_formats(ray_local, tmp_path, fmt):
    src = _folder(tmp_path / "src", n=3, size=(80, 60))
    ingest(src, tmp_path / "ds", IngestOptions(image_format=fmt, resize=40, raw_size=32, val_fraction=0.0))
    assert load_info(tmp_path / "ds").image_format == fmt
    for r in _rows(tmp_path / "ds"):
        if fmt == "raw":
            assert (r["height"], r["width"]) == (32, 32) and len(r["image"]) == 32 * 32 * 3
        else:
            img = Image.open(io.BytesIO(r["image"]))
            assert img.format == "PNG" and img.size == (r["width"], r["height"]) == (53, 40)


def _manifest_tree(tmp_path: Path) -> Path:
    _folder(tmp_path / "imgs", n=3)
    return tmp_path / "imgs"


def test_manifest_csv_with_relative_paths_and_parquet(ray_local, tmp_path):
    _manifest_tree(tmp_path)
    lines = ["path,label"] + [f"imgs/{c}/{i}.jpg,{c}" for c in ("cat", "dog") for i in range(3)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    s = ingest(tmp_path / "m.csv", tmp_path / "ds", OPTS)
    assert s.added == 6 and load_info(tmp_path / "ds").params["source_type"] == "manifest"

    import pyarrow as pa

    table = pa.table({"path": [str(tmp_path / f"imgs/{c}/{i}.jpg") for c in ("cat", "dog") for i in range(3)],
                      "label": [c for c in ("cat", "dog") for _ in range(3)],
                      "split": ["train", "train", "val"] * 2})
    pq.write_table(table, tmp_path / "m.parquet")
    s = ingest(tmp_path / "m.parquet", tmp_path / "ds2", OPTS)
    assert {k: sum(v.values()) for k, v in s.counts.items()} == {"train": 4, "val": 2}


@pytest.mark.fault("bad manifest CSV: no label column, a row naming a missing file", inputs=2,
                   outcome="UserError naming the file and the column or row")
def test_manifest_errors_name_the_column_or_file(tmp_path):
    _manifest_tree(tmp_path)
    (tmp_path / "nolabel.csv").write_text("path,klass\nimgs/cat/0.jpg,cat\n")
    with pytest.raises(UserError, match=r"nolabel.csv: missing column 'label'"):
        list_source(tmp_path / "nolabel.csv")
    (tmp_path / "missing.csv").write_text("path,label\nimgs/cat/0.jpg,cat\nimgs/cat/nope.jpg,dog\n")
    with pytest.raises(UserError, match=r"missing.csv row 3: file .*nope.jpg does not exist"):
        list_source(tmp_path / "missing.csv")


@pytest.mark.fault("a local manifest whose rows name `file:///dev/zero`, a FIFO and an s3:// object", inputs=3,
                   outcome="the device and the FIFO rejected as not regular files, never read; the URI a "
                           "UserError naming the row")
def test_manifest_rows_name_regular_files_of_the_manifests_own_store(tmp_path):
    _manifest_tree(tmp_path)
    os.mkfifo(tmp_path / "imgs" / "pipe.jpg")
    (tmp_path / "m.csv").write_text("path,label\nimgs/cat/0.jpg,cat\nimgs/dog/0.jpg,dog\n"
                                    "file:///dev/zero,cat\nimgs/pipe.jpg,dog\n")
    listing = list_source(tmp_path / "m.csv")
    assert {r[1] for r in listing.rejects} == {"unreadable: not a regular file (FIFO, socket or device)"}
    assert {r[0] for r in listing.rejects} == {"/dev/zero", str(tmp_path / "imgs" / "pipe.jpg")}
    (tmp_path / "uri.csv").write_text("path,label\nimgs/cat/0.jpg,cat\ns3://elsewhere/x.jpg,dog\n")
    with pytest.raises(UserError, match=r"uri.csv row 3: s3://elsewhere/x.jpg is a URI in a local manifest"):
        list_source(tmp_path / "uri.csv")


@pytest.mark.fault("an image file over the size limit, a FIFO named like an image (ingest's and predict's readers)",
                   inputs=2, outcome="refused before reading: an OSError naming the limit (a reject in ingest, "
                                     "the row's error in predict); the FIFO never blocks")
def test_image_files_are_read_only_if_regular_and_within_the_limit(tmp_path, monkeypatch):
    from alexnet.serve import predict
    from pipelines.ingest import sources

    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 5000)
    monkeypatch.setattr(sources, "MAX_IMAGE_BYTES", 4096)
    with pytest.raises(OSError, match=r"5000 bytes, over the 0 MiB limit"):
        sources.read_source(str(big))
    os.mkfifo(tmp_path / "pipe.png")
    monkeypatch.setattr(predict, "MAX_IMAGE_BYTES", 4096)
    rows = predict._read_files({"path": [str(big), str(tmp_path / "pipe.png")], "label": [0, 0]})
    assert "over the 0 MiB limit" in rows["read_error"][0] and "not a regular file" in rows["read_error"][1]
    assert list(rows["image"]) == [b"", b""]


def _truncated(path: Path) -> None:
    buf = io.BytesIO()
    _noise(64, 64, 42).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _bad_tree(tmp_path: Path) -> Path:
    src = _folder(tmp_path / "src", n=3)
    _truncated(src / "cat" / "truncated.jpg")
    (src / "cat" / "empty.jpg").write_bytes(b"")
    (src / "cat" / "text.png").write_text("this is not a png")
    _noise(20, 12, 5).save(src / "dog" / "tiny.png")
    (src / "dog" / "notes.txt").write_text("x")
    (src / "dog" / "bomb.png").write_bytes(png_header_only(40000, 40000))  # 4.8 GB once decoded
    # Unreadable even for root (tests run as root, so chmod 000 would not do): a dangling
    # symlink, a FIFO (reading it would block: it must be refused unread), a directory named x.jpg.
    (src / "dog" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(src / "dog" / "fifo.jpg")
    (src / "dog" / "dir.jpg").mkdir()
    (src / "empty-class").mkdir()
    return src


@pytest.mark.fault("bad source files: truncated, empty, not an image, too small, decompression bomb, wrong "
                   "extension, dangling symlink, FIFO, directory named .jpg, empty class folder", inputs=10,
                   outcome="each reported in rejects.csv with its reason; the 6 good images ingested; nothing dropped silently")
def test_bad_files_are_rejected_with_reasons_and_the_run_finishes(ray_local, tmp_path):
    src = _bad_tree(tmp_path)
    s = ingest(src, tmp_path / "ds", OPTS)
    assert s.added == 6
    reasons = {Path(p).name: r for p, r in csv.reader(open(tmp_path / "ds" / "rejects.csv"))}
    assert reasons.pop("path") == "reason"
    assert reasons["truncated.jpg"].startswith("truncated image")
    assert reasons["empty.jpg"].startswith("empty file")
    assert reasons["text.png"].startswith("not an image")
    assert reasons["tiny.png"].startswith("too small: 20x12")
    assert reasons["bomb.png"].startswith("too large")
    assert reasons["notes.txt"].startswith("not an image extension")
    assert reasons["dangling.jpg"].startswith("unreadable")
    assert reasons["fifo.jpg"].startswith("unreadable: not a regular file")
    assert reasons["dir.jpg"] == "unreadable: is a directory"
    assert reasons["empty-class"].startswith("empty class folder")
    assert len(reasons) == len(s.rejects) == 10
    assert s.rejects_by_kind["unreadable"] == 3
    info = open_dataset(tmp_path / "ds")
    assert info.classes == ["cat", "dog", "empty-class"] and info.num_images == 6


@pytest.mark.fault("a truncated JPEG under --strict", inputs=1,
                   outcome="UserError naming the file; no DEST created")
def test_strict_fails_and_writes_nothing(ray_local, tmp_path):
    src = _folder(tmp_path / "src", n=3)
    _truncated(src / "cat" / "truncated.jpg")  # found only when decoded, in the encode pass
    with pytest.raises(UserError, match="--strict: 1 file.*truncated.jpg"):
        ingest(src, tmp_path / "ds", IngestOptions(resize=48, strict=True))
    assert not (tmp_path / "ds").exists()


@pytest.mark.fault("bad SOURCE or DEST: a missing source, one class folder, class folders without "
                   "images, a non-empty DEST that is not a dataset", inputs=4,
                   outcome="one UserError each; no DEST created; the foreign DEST holds only its own file")
def test_bad_sources_and_destinations(ray_local, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ingest(tmp_path / "nope", tmp_path / "ds", OPTS)
    one = tmp_path / "one"
    _folder(one, classes=("only",))
    with pytest.raises(UserError, match="found 1 class folder"):
        ingest(one, tmp_path / "ds", OPTS)
    (tmp_path / "noimg" / "a").mkdir(parents=True), (tmp_path / "noimg" / "b").mkdir()
    with pytest.raises(UserError, match="no images found"):
        ingest(tmp_path / "noimg", tmp_path / "ds", OPTS)
    assert not (tmp_path / "ds").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("mine")
    with pytest.raises(UserError, match="non-empty directory that is not a dataset"):
        ingest(_folder(tmp_path / "src"), busy, OPTS)
    assert os.listdir(busy) == ["thesis.tex"]


@pytest.mark.fault("bad `alexnet ingest` arguments: a missing source, a manifest without a path "
                   "column, a DEST that is not a dataset", inputs=3,
                   outcome="exit 2 with the reason and no traceback; no DEST created, the foreign DEST "
                           "untouched")
def test_cli_errors_exit_2_and_write_nothing(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\nx.jpg,a\n")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    src = _folder(tmp_path / "src")
    for args, needle in [((str(tmp_path / "nope"), str(tmp_path / "ds")), "does not exist"),
                         ((str(tmp_path / "m.csv"), str(tmp_path / "ds")), "missing column 'path'"),
                         ((str(src), str(busy)), "not a dataset")]:
        r = cli_here("ingest", *args)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "ds").exists() and os.listdir(busy) == ["keep.txt"]


# --- CIFAR -------------------------------------------------------------------------------------


def write_cifar10(root: Path, per_batch: int = 6, batches: int = 2, seed: int = 0) -> Path:
    """Real CIFAR-10 python-version files, written the way the originals are (protocol 2, bytes keys)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, batches + 1)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, len(names), size=per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


@pytest.mark.slow  # starts its own local Ray in a subprocess
def test_cifar10_directory_via_the_cli(tmp_path):
    src = write_cifar10(tmp_path / "cifar-10-batches-py")
    dest = tmp_path / "cifar10"
    r = _alexnet("ingest", str(src), str(dest), "--num-cpus", "2")  # the documented command, no options
    assert r.returncode == 0, r.stderr
    assert "added 18 images" in r.stdout and "train: 12 images" in r.stdout and "val: 6 images" in r.stdout
    info = open_dataset(dest)
    assert info.classes == ["airplane", "automobile", "bird"]  # the meta file's order = CIFAR's labels
    assert info.image_format == "png" and info.params["source_type"] == "cifar"
    rows = _rows(dest)
    batch = pickle.load(open(src / "data_batch_1", "rb"), encoding="bytes")
    first = next(r for r in rows if r["source"].endswith("data_batch_1#0"))
    pixels = np.asarray(Image.open(io.BytesIO(first["image"])))
    assert pixels.shape == (32, 32, 3)  # stored at native size, losslessly
    assert np.array_equal(pixels, batch[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert first["label"] == batch[b"labels"][0]


def test_cifar100_files_and_a_single_batch(ray_local, tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    pickle.dump({"fine_label_names": ["apple", "bear", "cloud"], "coarse_label_names": ["x"]},
                open(root / "meta", "wb"))  # a Python 3 pickle (str keys, default protocol) too
    for name, n in (("train", 8), ("test", 4)):
        pickle.dump({"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                     "fine_labels": [i % 3 for i in range(n)], "coarse_labels": [0] * n}, open(root / name, "wb"))
    s = ingest(root, tmp_path / "ds", IngestOptions(image_format="png", resize=None))
    assert {k: sum(v.values()) for k, v in s.counts.items()} == {"train": 8, "val": 4}
    assert load_info(tmp_path / "ds").classes == ["apple", "bear", "cloud"]
    one = list_source(root / "train")  # one batch file: its split is left to --val-fraction
    assert len(one.items) == 8 and not one.has_splits


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.fault("CIFAR batch pickle whose payload calls os.system", inputs=1,
                   outcome="refused naming the file and the global, in the API and the CLI (exit 2); the "
                           "payload never ran; no DEST")
def test_malicious_cifar_pickle_is_rejected_without_running(tmp_path):
    root = write_cifar10(tmp_path / "cifar", batches=1)
    marker = tmp_path / "pwned"
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(UserError, match=r"data_batch_1: not a CIFAR .*refusing to load global (posix|os)\.system"):
        list_source(root)
    assert not marker.exists()
    r = _alexnet("ingest", str(root), str(tmp_path / "ds"))
    assert r.returncode == 2 and "refusing" in r.stderr and not marker.exists()
    assert not (tmp_path / "ds").exists()


class _Uninitialised:
    """Pickles as numpy's own `_reconstruct(ndarray, shape, dtype)` with no BUILD step after it:
    unpickled by numpy, an N x 3072 uint8 array of whatever the allocator returned."""

    def __init__(self, n: int, direct: bool = False):
        self.n, self.direct = n, direct

    def __reduce__(self):
        if self.direct:  # ndarray(shape, dtype): the same uninitialised memory, one call shorter
            return (np.ndarray, ((self.n, 3072), np.dtype("uint8")))
        return (np.ndarray.__reduce__(np.zeros(1, np.uint8))[0], (np.ndarray, (self.n, 3072), np.dtype("uint8")))


@pytest.mark.fault("CIFAR pickle that builds an uninitialised array (numpy's _reconstruct without "
                   "its fill step; ndarray() called directly)", inputs=2,
                   outcome="refused naming the file before any pixel is stored; genuine batches (protocols 2"
                           " and 4) still load")
@pytest.mark.parametrize("direct, reason", [(False, r"_reconstruct with shape \(64, 3072\)"),
                                            (True, r"ndarray\(\.\.\.\) called directly")],
                         ids=["_reconstruct", "ndarray"])
def test_a_cifar_pickle_that_never_fills_its_array_is_refused(tmp_path, direct, reason):
    root = write_cifar10(tmp_path / "cifar", batches=1)
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Uninitialised(64, direct), b"labels": [0] * 64}, f, protocol=2)
    raw = (root / "data_batch_1").read_bytes()
    assert (b"_reconstruct" in raw) is not direct  # each case builds its array the way its id says
    assert pickle.loads(raw)[b"data"].shape == (64, 3072)  # numpy itself would build it
    with pytest.raises(UserError, match=rf"data_batch_1: not a CIFAR python-version pickle: .*{reason}"):
        list_source(root)
    # Genuine batches still load, at numpy's default protocols too.
    for protocol in (2, 4):
        pickle.dump({b"data": np.arange(64 * 3072, dtype=np.uint8).reshape(64, 3072) % 251, b"labels": [1] * 64},
                    open(root / "data_batch_1", "wb"), protocol=protocol)
        from pipelines.ingest import cifar

        cifar.load_batch.cache_clear()
        pixels, labels = cifar.load_batch(str((root / "data_batch_1").resolve()))
        assert pixels.shape == (64, 32, 32, 3) and int(pixels[0, 0, 1, 0]) == 1 and labels == [1] * 64


@pytest.mark.fault("CIFAR file one byte over the 256 MB bound (sparse)", inputs=1,
                   outcome="refused naming the file and the bound, unread")
def test_an_oversized_cifar_file_is_refused_before_it_is_read(tmp_path):
    from pipelines.ingest import cifar

    root = write_cifar10(tmp_path / "cifar", batches=1)
    with open(root / "data_batch_1", "r+b") as f:
        f.truncate(cifar.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(UserError, match=r"data_batch_1: larger than 256 MB"):
        list_source(root)


# --- the dataset version ------------------------------------------------------------------------


def test_the_version_changes_with_the_stored_encoding_and_only_with_it(ray_local, tmp_path):
    src = _folder(tmp_path / "src", n=3, size=(80, 60))
    base = dict(min_side=16, val_fraction=0.25)
    variants = {"a": IngestOptions(resize=48, **base), "a-again": IngestOptions(resize=48, **base),
                "resize": IngestOptions(resize=40, **base), "png": IngestOptions(image_format="png", resize=48, **base),
                "quality": IngestOptions(resize=48, quality=60, **base),
                "raw": IngestOptions(image_format="raw", raw_size=32, **base),
                "raw-size": IngestOptions(image_format="raw", raw_size=40, **base)}
    versions = {name: ingest(src, tmp_path / name, opts).version for name, opts in variants.items()}
    assert versions["a"] == versions["a-again"]  # same source, same encoding: same content
    others = [v for k, v in versions.items() if k != "a-again"]
    assert len(set(others)) == len(others), versions


@pytest.mark.fault("an append with another --resize, --quality or --format than the dataset's", inputs=3,
                   outcome="refused naming both values; dataset.json byte-identical")
def test_appending_with_another_encoding_is_refused_naming_both_values(ray_local, tmp_path):
    src, dest = _folder(tmp_path / "src", n=3), tmp_path / "ds"
    ingest(src, dest, OPTS)
    before = (dest / "dataset.json").read_bytes()
    _folder(src, n=5)
    for opts, needle in [(IngestOptions(resize=40, min_side=16), "--resize 40: .* was ingested with --resize 48"),
                         (IngestOptions(resize=48, quality=50, min_side=16), "--quality 50: .* with --quality 90"),
                         (IngestOptions(image_format="png", resize=48, min_side=16), "--format png: .* with --format jpeg")]:
        with pytest.raises(UserError, match=needle):
            ingest(src, dest, opts)
    assert (dest / "dataset.json").read_bytes() == before


def test_an_unchanged_source_keeps_the_version_of_a_dataset_written_by_earlier_code(ray_local, tmp_path):
    src, dest = _folder(tmp_path / "src", n=3), tmp_path / "ds"
    ingest(src, dest, OPTS)
    meta = json.loads((dest / "dataset.json").read_text())
    meta["version"] = "0123456789abcdef"  # what another version of the fingerprint computed
    (dest / "dataset.json").write_text(json.dumps(meta))
    again = ingest(src, dest, OPTS)
    assert again.added == 0 and again.version == again.previous_version == "0123456789abcdef"
    assert load_info(dest).version == "0123456789abcdef"
    _folder(src, n=4)  # one new image per class: new content, a new version
    grown = ingest(src, dest, OPTS)
    assert grown.added == 2 and grown.version != "0123456789abcdef"
