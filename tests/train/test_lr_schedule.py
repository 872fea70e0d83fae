"""Learning-rate schedules: endpoints, warm-up, batch scaling and the paper's plateau rule."""

from __future__ import annotations

import pytest

from alexnet.lr_schedule import PLATEAU_PATIENCE, Plateau, lr_at, scaled_lr


def test_lr_scales_linearly_with_the_global_batch():
    assert scaled_lr(0.01, 128) == pytest.approx(0.01)
    assert scaled_lr(0.01, 1024) == pytest.approx(0.08)


def test_step_schedule_divides_by_ten_every_step_size_epochs():
    lrs = [lr_at(e, base=0.01, schedule="step", epochs=90, warmup_epochs=0) for e in (0, 29, 30, 59, 60, 89)]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])
    assert lr_at(5, base=1.0, schedule="step", epochs=10, warmup_epochs=0, step_size=5) == pytest.approx(0.1)


def test_cosine_starts_at_base_and_ends_near_zero():
    assert lr_at(0, base=0.1, schedule="cosine", epochs=10, warmup_epochs=0) == pytest.approx(0.1)
    assert lr_at(9, base=0.1, schedule="cosine", epochs=10, warmup_epochs=0) < 0.01


def test_warmup_ramps_from_a_tenth_to_base():
    lrs = [lr_at(e, base=1.0, schedule="constant", epochs=10, warmup_epochs=4) for e in range(6)]
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(1.0) and lrs == sorted(lrs)


def test_warmup_is_linear_within_an_epoch_and_meets_the_schedule():
    """One warm-up epoch: base/10 at its first step, half-way at its middle, base after it."""
    at = [lr_at(0, base=1.0, schedule="cosine", epochs=10, warmup_epochs=1, fraction=f) for f in (0, 0.5, 0.99)]
    assert at == pytest.approx([0.1, 0.55, 0.1 + 0.9 * 0.99])
    assert lr_at(1, base=1.0, schedule="cosine", epochs=10, warmup_epochs=1) == pytest.approx(1.0)


def test_plateau_divides_by_ten_after_patience_epochs_without_improvement_and_round_trips():
    p = Plateau()
    p.update(0.5)
    for _ in range(PLATEAU_PATIENCE - 1):
        p.update(0.4)
    assert p.scale == 1.0
    p.update(0.5)  # equal is not better
    assert p.scale == pytest.approx(0.1)
    assert Plateau(**p.state_dict()) == p
    assert lr_at(3, base=0.01, schedule="plateau", epochs=90, warmup_epochs=0, plateau_scale=p.scale) == pytest.approx(0.001)
