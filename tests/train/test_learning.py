"""It learns on a user's own data with the defaults, and predicts what it trained on.

Generated photos of varying, non-square sizes (none chosen to fit a recipe) are ingested with
`alexnet ingest`'s defaults (stored at 256 px) and trained with the shipped demo recipe (64 px
crops of images rescaled to 72 px): training must see the images at validation's scale and learn.
The classes differ by shape only (their colours are random), so what is learnt is the shape at
the scale the recipe shows it.
The trained model then predicts the same picture identically whatever file format it arrives in,
EXIF-rotated phone photos included.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main
from alexnet.demo import render, write_demo_images

pytestmark = pytest.mark.slow

# Stripes whose orientation is the class: a picture turned by 90 degrees changes class, so a
# decoder that ignores EXIF orientation shows up as a wrong prediction.
CLASSES = ("circle", "hstripes", "vstripes")


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    src = write_demo_images(root / "photos", per_class=200, seed=11, classes=CLASSES, sizes=(200, 360))
    dataset = root / "dataset"
    assert main(["ingest", str(src), str(dataset)]) == 0  # the defaults: stored at 256 px
    stored = json.loads((dataset / "dataset.json").read_text())["params"]["resize"]
    assert stored == 256
    work = root / "work"
    assert main(["train", "--data", str(dataset), "--recipe", "demo", "--workdir", str(work),
                 "--run-name", "learns", "--set", "optim.epochs=12"]) == 0
    return {"work": work, "dataset": dataset, "root": root}


def _metric(work, key: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("alexnet").experiment_id])[0]
    return max(m.value for m in client.get_metric_history(run.info.run_id, key))


def test_default_ingest_and_a_small_recipe_learn(trained):
    """Chance is 1/3. Before training took its crops at the recipe's scale, this run stayed near
    chance: its 64 px crops were corners of the 256 px stored images. From scratch the shapes
    separate after 30-60 steps (2026-12-01, two runs: top-1 0.61-0.65 at epoch 3-4, 0.96-0.98 by
    the end). A slow start happens too: one CI run (12-07) confused the two stripe classes from
    epoch 7 on and ended at 0.70. The bar sits between that and chance: 0.6 is four standard
    errors above 1/3 on the 57 val images, where the wrong-scale crops never got."""
    assert _metric(trained["work"], "val/top1") >= 0.6


def _variants(picture: Image.Image) -> dict[str, bytes]:
    """The same picture as every format ingest accepts, and as a phone stores a turned photo."""
    out = {}
    for name, fmt, kw in (("photo.jpg", "JPEG", {"quality": 95}), ("photo.png", "PNG", {}),
                          ("photo.webp", "WEBP", {"quality": 95}), ("photo.bmp", "BMP", {}),
                          ("photo.tiff", "TIFF", {})):
        buf = io.BytesIO()
        picture.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CCW to view": the pixels are stored turned 90 degrees clockwise
    buf = io.BytesIO()
    picture.transpose(Image.Transpose.ROTATE_270).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    out["phone.jpg"] = buf.getvalue()
    return out


def test_the_same_picture_gets_the_same_prediction_in_every_format(trained, tmp_path):
    picture = render("hstripes", (300, 220), np.random.default_rng(2024))
    folder = tmp_path / "incoming"
    for cls in ("hstripes", "vstripes"):  # ingest needs two classes; the pictures are all hstripes
        (folder / cls).mkdir(parents=True)
    for name, data in _variants(picture).items():
        (folder / "hstripes" / name).write_bytes(data)
    turned = _variants(picture.transpose(Image.Transpose.ROTATE_90))["photo.png"]  # now a vstripes picture
    (folder / "vstripes" / "placeholder.png").write_bytes(turned)

    out = tmp_path / "from-files"
    assert main(["predict", "--data", str(folder), "--out", str(out), "--workdir", str(trained["work"])]) == 0
    table = pq.read_table(out).to_pandas()
    table["name"] = [p.rsplit("/", 1)[-1] for p in table.source]
    by_file = dict(zip(table.name, table.pred_name))
    assert not any(table.error), table.error.tolist()
    assert {by_file[n] for n in _variants(picture)} == {"hstripes"}, by_file
    # The turned picture must not read as hstripes: that is what makes phone.jpg's answer mean the
    # EXIF turn was applied. It need not read as vstripes: a 12-epoch model at ~0.9 top-1 called
    # it "circle" once in CI (12-06), which says nothing about the decoders.
    assert by_file["placeholder.png"] != "hstripes", by_file

    dataset = tmp_path / "ingested"
    assert main(["ingest", str(folder), str(dataset), "--val-fraction", "0"]) == 0
    out = tmp_path / "from-dataset"
    assert main(["predict", "--data", str(dataset), "--out", str(out), "--workdir", str(trained["work"])]) == 0
    table = pq.read_table(out).to_pandas()
    by_file = {p.rsplit("/", 1)[-1]: pred for p, pred in zip(table.source, table.pred_name)}
    assert {by_file[n] for n in _variants(picture)} == {"hstripes"}, by_file
