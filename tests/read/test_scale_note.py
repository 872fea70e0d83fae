"""The one line `alexnet train` prints when a recipe's scale is far from the stored images'."""

from __future__ import annotations

from pipelines.dataset import DatasetInfo
from pipelines.read.loader import scale_note, stored_side


def _info(**params) -> DatasetInfo:
    return DatasetInfo(classes=["a", "b"], counts={}, shards={}, pixel_mean=[0.5] * 3, pixel_std=[0.2] * 3,
                       pca_eigval=[0.1] * 3, pca_eigvec=[[1, 0, 0], [0, 1, 0], [0, 0, 1]], version="v",
                       image_format=params.pop("image_format", "jpeg"), params=params)


def test_stored_side_comes_from_the_ingest_options():
    assert stored_side(_info(resize=256)) == 256
    assert stored_side(_info(image_format="raw", raw_size=64, resize=256)) == 64


def test_far_scales_get_one_line_naming_both_sizes_and_the_fix():
    shrink = scale_note(256, 72)  # the demo recipe's resize
    assert "256 px" in shrink and "data.resize=72" in shrink and "--resize 72" in shrink and "\n" not in shrink
    grow = scale_note(32, 256)  # CIFAR-sized images under the ImageNet recipe
    assert "32 px" in grow and "scales them up" in grow and "data.resize=256" in grow
    assert scale_note(72, 72) is None and scale_note(100, 72) is None and scale_note(256, 256) is None
