"""The epoch functions: plain PyTorch on tiny tensors (no Ray)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alexnet.train.epochs import NonFiniteLoss, evaluate_epoch, normalize, reduce_sums, topk_correct, train_one_epoch

MEAN = torch.zeros(1, 3, 1, 1)
STD = torch.ones(1, 3, 1, 1)


class Tiny(torch.nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _batches(n=3, rows=4, crops=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (rows, crops, 3, 8, 8) if crops else (rows, 3, 8, 8)
    return [{"image": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
             "label": torch.randint(0, 4, (rows,), generator=g)} for _ in range(n)]


def test_topk_counts_hits_and_caps_k_at_the_class_count():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    c1, c5 = topk_correct(logits, torch.tensor([1, 2]))
    assert (int(c1), int(c5)) == (1, 2)


def test_train_one_epoch_returns_sums_and_learns():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    data = _batches()
    first = train_one_epoch(model, opt, data, torch.device("cpu"), mean=MEAN, std=STD, epoch=0)
    assert first["images"] == 12 and first["seconds"] > 0 and 0 <= first["data_wait_s"] <= first["seconds"]
    for e in range(1, 20):
        last = train_one_epoch(model, opt, data, torch.device("cpu"), mean=MEAN, std=STD, epoch=e)
    assert last["loss_sum"] < first["loss_sum"]


@pytest.mark.fault("a NaN weight injected at step 2", inputs=1,
                   outcome="NonFiniteLoss naming the epoch and the step")
def test_non_finite_loss_names_the_epoch_and_the_first_bad_step():
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def poison(step):
        if step == 2:
            with torch.no_grad():
                model.fc.bias.fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match="epoch 7, step 2"):
        train_one_epoch(model, opt, _batches(n=5), torch.device("cpu"), mean=MEAN, std=STD, epoch=7,
                        before_step=poison, check_every=50)


def test_ten_crop_evaluation_averages_the_softmax_over_the_crops():
    torch.manual_seed(0)
    model = Tiny().eval()
    data = _batches(n=2, rows=3, crops=10)
    got = evaluate_epoch(model, data, torch.device("cpu"), mean=MEAN, std=STD)
    loss = top1 = 0.0
    for b in data:
        probs = torch.stack([F.softmax(model(b["image"][:, k].float() / 255), 1) for k in range(10)]).mean(0)
        loss += F.nll_loss(probs.log(), b["label"], reduction="sum").item()
        top1 += (probs.argmax(1) == b["label"]).sum().item()
    assert got["images"] == 6 and got["top1"] == top1 and got["top5"] == 6
    assert got["loss_sum"] == pytest.approx(loss, rel=1e-4)
    single = evaluate_epoch(model, [{"image": b["image"][:, 0], "label": b["label"]} for b in data], torch.device("cpu"),
                      mean=MEAN, std=STD)
    assert single["images"] == 6 and single["loss_sum"] != pytest.approx(got["loss_sum"])


def test_predict_scores_ten_crops_as_the_epochs_val_does():
    """The champion score and `evaluate --ten-crop` (alexnet.serve.predict) average the crops'
    softmax too, not their logits: one rule for the run's curve and the registry's decision."""
    from alexnet.serve.predict import class_probs

    torch.manual_seed(0)
    tiny = Tiny().eval()

    def model(images_u8):  # a served model takes uint8 and normalises inside
        return tiny(images_u8.float() / 255)

    with torch.no_grad():
        for b in _batches(n=2, rows=3, crops=10):
            expected = torch.stack([F.softmax(model(b["image"][:, k]), 1) for k in range(10)]).mean(0)
            logit_mean = F.softmax(torch.stack([model(b["image"][:, k]) for k in range(10)]).mean(0), 1)
            assert torch.allclose(class_probs(model, b["image"]), expected, atol=1e-6)
            assert not torch.allclose(class_probs(model, b["image"]), logit_mean, atol=1e-6)
            assert torch.allclose(class_probs(model, b["image"][:, 0]), F.softmax(model(b["image"][:, 0]), 1))


def test_reduce_sums_without_a_process_group_is_the_identity():
    assert reduce_sums({"a": 1.0, "b": 2}, torch.device("cpu")) == {"a": 1.0, "b": 2}


def test_normalize_maps_uint8_to_standardised_float_per_channel():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    mean = torch.tensor([0.5, 0.0, 1.0]).view(3, 1, 1)
    std = torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1)
    y = normalize(x, mean, std, channels_last=True)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    assert y[:, 0].eq(1.0).all() and y[:, 1].eq(1.0).all() and y[:, 2].eq(0.0).all()


def test_epoch_metrics_are_global_over_the_workers_sums():
    from alexnet.train.loop import epoch_metrics

    # two workers, each 100 images in 4 s of which 1 s waiting for data (reduce_sums adds them)
    tr = {"loss_sum": 300.0, "images": 200, "seconds": 8.0, "data_wait_s": 2.0}
    va = {"loss_sum": 50.0, "images": 25, "top1": 20, "top5": 25}
    m = epoch_metrics(3, 0.01, tr, va, wall_s=5.5, world=2)
    assert m["throughput/images_per_s"] == 50.0  # 200 images in 4 s of wall time, not 8
    assert m["throughput/data_wait_fraction"] == 0.25
    assert (m["train/loss"], m["val/loss"], m["val/top1"], m["val/top5"]) == (1.5, 2.0, 0.8, 1.0)
    assert (m["epoch"], m["lr"], m["time/epoch_s"]) == (3, 0.01, 5.5)
