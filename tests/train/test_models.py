"""Unit tests of the network definitions: parameter counts, shapes, init, torchvision interchange."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet import ARCHITECTURES, build_model, count_parameters
from pipelines.errors import UserError

NUM_CLASSES = 10


def conv_params(c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    return c_out * (c_in // groups) * k * k + c_out


def fc_params(f_in: int, f_out: int) -> int:
    return f_in * f_out + f_out


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """One model per arch, built once: construction of the 61M-parameter nets dominates otherwise."""
    torch.manual_seed(0)
    return {arch: build_model(arch, NUM_CLASSES) for arch in ARCHITECTURES}


def output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every named layer of features and classifier."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
        for part in (model.features, model.classifier)
        for name, layer in part.named_children()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


# --- parameter counts -------------------------------------------------------------------------


def test_paper_has_the_papers_parameter_count() -> None:
    expected = (
        conv_params(3, 96, 11)
        + conv_params(96, 256, 5, groups=2)  # conv2: each GPU's 128 kernels see its own 48 maps
        + conv_params(256, 384, 3)  # conv3: across GPUs
        + conv_params(384, 384, 3, groups=2)
        + conv_params(384, 256, 3, groups=2)
        + fc_params(256 * 6 * 6, 4096)
        + fc_params(4096, 4096)
        + fc_params(4096, 1000)
    )
    assert expected == 60_965_224
    assert count_parameters(build_model("paper", 1000)) == expected


def test_bn_has_the_articles_parameter_count() -> None:
    bn = sum(2 * c for c in (96, 256, 384, 384, 256, 4096, 4096))  # gamma and beta
    expected = (
        conv_params(3, 96, 11)
        + conv_params(96, 256, 11)
        + conv_params(256, 384, 3)
        + conv_params(384, 384, 3)
        + conv_params(384, 256, 3)
        + fc_params(256 * 1 * 1, 4096)  # the 'valid' stack ends in 1x1x256 at 224 input
        + fc_params(4096, 4096)
        + fc_params(4096, 1000)
        + bn
    )
    assert expected == 28_056_616
    assert count_parameters(build_model("bn", 1000)) == expected


@pytest.mark.parametrize("num_classes", [1000, NUM_CLASSES])
def test_torchvision_count_equals_torchvisions_own(num_classes: int) -> None:
    import torchvision

    theirs = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    assert count_parameters(build_model("torchvision", num_classes)) == count_parameters(theirs)


# --- shapes -----------------------------------------------------------------------------------


def test_paper_layer_shapes_match_figure_2_at_227(models) -> None:
    model = models["paper"].eval()
    shapes = output_shapes(model, torch.randn(1, 3, 227, 227))
    expected = {
        "conv1": (96, 55, 55),
        "norm1": (96, 55, 55),
        "pool1": (96, 27, 27),
        "conv2": (256, 27, 27),
        "pool2": (256, 13, 13),
        "conv3": (384, 13, 13),
        "conv4": (384, 13, 13),
        "conv5": (256, 13, 13),
        "pool5": (256, 6, 6),
        "fc6": (4096,),
        "fc7": (4096,),
        "fc8": (NUM_CLASSES,),
    }
    assert {name: shapes[name] for name in expected} == expected


def test_bn_layer_shapes_match_the_article_at_224(models) -> None:
    model = models["bn"].eval()
    shapes = output_shapes(model, torch.randn(1, 3, 224, 224))
    expected = {
        "conv1": (96, 54, 54),
        "pool1": (96, 27, 27),
        "fit1": (96, 27, 27),
        "conv2": (256, 17, 17),
        "pool2": (256, 8, 8),
        "conv3": (384, 6, 6),
        "conv4": (384, 4, 4),
        "conv5": (256, 2, 2),
        "pool5": (256, 1, 1),
        "fc6": (4096,),
        "fc7": (4096,),
        "fc8": (NUM_CLASSES,),
    }
    assert {name: shapes[name] for name in expected} == expected


def test_small_input_adaptations_are_exact_at_native_size(models) -> None:
    # paper: the adaptive pool5 is the paper's overlapping 3x3/2 max pool on the 13x13 map.
    x = torch.randn(2, 256, 13, 13)
    assert torch.equal(models["paper"].features.pool5(x), F.max_pool2d(x, kernel_size=3, stride=2))
    # bn: the adaptive fit after pool1 is the identity on the native 27x27 map.
    x = torch.randn(2, 96, 27, 27)
    assert torch.equal(models["bn"].features.fit1(x), x)


@pytest.mark.parametrize("size", [64, 96, 224, 227])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_forward_backward_gives_logits(models, arch: str, size: int) -> None:
    model = models[arch].train()
    model.zero_grad(set_to_none=True)
    logits = model(torch.randn(2, 3, size, size))  # batch 2: BatchNorm1d needs >1 sample in train
    assert logits.shape == (2, NUM_CLASSES)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())


# --- torchvision interchange ------------------------------------------------------------------


def test_torchvision_state_dicts_load_both_ways_with_identical_outputs() -> None:
    import torchvision

    torch.manual_seed(1)
    ours = build_model("torchvision", NUM_CLASSES).eval()
    theirs = torchvision.models.alexnet(weights=None, num_classes=NUM_CLASSES).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)

    ours.load_state_dict(theirs.state_dict())  # theirs -> ours
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))

    torch.manual_seed(2)
    ours = build_model("torchvision", NUM_CLASSES).eval()
    theirs.load_state_dict(ours.state_dict())  # ours -> theirs
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_torchvision_init_is_torchvisions() -> None:
    import torchvision

    torch.manual_seed(3)
    ours = build_model("torchvision", NUM_CLASSES)
    torch.manual_seed(3)
    theirs = torchvision.models.alexnet(weights=None, num_classes=NUM_CLASSES)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# --- initialisation ---------------------------------------------------------------------------


def test_paper_init_is_gaussian_001_with_biases_1_where_stated(models) -> None:
    layers = {**dict(models["paper"].features.named_children()), **dict(models["paper"].classifier.named_children())}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        w = layers[name].weight.detach()
        # >= 34,848 samples per layer: the std's sampling error is < 0.4%, the mean's < 6e-5.
        assert w.std().item() == pytest.approx(0.01, rel=0.03), name
        assert abs(w.mean().item()) < 5e-4, name
        bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(layers[name].bias == bias), name


def test_bn_init_is_keras_default(models) -> None:
    model = models["bn"]
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_out, fan_in = m.weight.shape[0], m.weight.shape[1]
            receptive = m.weight[0, 0].numel()
            bound = (6 / ((fan_in + fan_out) * receptive)) ** 0.5  # glorot_uniform
            w = m.weight.detach()
            assert w.abs().max().item() <= bound, name
            assert w.std().item() == pytest.approx(bound / 3**0.5, rel=0.03), name
            assert torch.all(m.bias == 0), name
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert (m.momentum, m.eps) == (0.01, 1e-3), name  # Keras momentum 0.99, epsilon 1e-3
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name


def test_paper_lrn_is_the_papers_formula(models) -> None:
    a = torch.rand(1, 96, 3, 3) * 40  # large activations, so the normalisation is visible
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    squares = F.pad(a.pow(2), (0, 0, 0, 0, n // 2, n // 2))  # zero maps beyond 0 and N-1
    total = sum(squares[:, j : j + 96] for j in range(n))  # sum over i-n/2 .. i+n/2
    expected = a / (k + alpha * total).pow(beta)
    torch.testing.assert_close(models["paper"].features.norm1(a), expected)
    assert not torch.allclose(expected, a / k**beta)  # the sum term matters at this scale


# --- choices ----------------------------------------------------------------------------------


@pytest.mark.fault("an unknown architecture", inputs=1,
                   outcome="UserError naming the choices")
def test_unknown_arch_names_the_choices() -> None:
    with pytest.raises(UserError, match="bn, paper, torchvision"):
        build_model("vgg", NUM_CLASSES)


@pytest.mark.fault("num_classes 1, 0, -3, 2.5, True", inputs=5,
                   outcome="UserError naming num_classes")
@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.5, True])
def test_bad_num_classes_is_a_user_error(num_classes) -> None:
    with pytest.raises(UserError, match="num_classes"):
        build_model("torchvision", num_classes)


@pytest.mark.fault("dropout -0.1 and 1.0", inputs=2,
                   outcome="UserError naming dropout")
@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_bad_dropout_is_a_user_error(dropout: float) -> None:
    with pytest.raises(UserError, match="dropout"):
        build_model("bn", NUM_CLASSES, dropout=dropout)


@pytest.mark.parametrize(("arch", "default"), [("paper", 0.5), ("torchvision", 0.5), ("bn", 0.4)])
def test_dropout_defaults_to_the_source_and_can_be_overridden(arch: str, default: float) -> None:
    def rates(model: nn.Module) -> set[float]:
        return {m.p for m in model.modules() if isinstance(m, nn.Dropout)}

    assert rates(build_model(arch, NUM_CLASSES)) == {default}
    assert rates(build_model(arch, NUM_CLASSES, dropout=0.1)) == {0.1}


# --- compile / channels_last / bf16 -----------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_traces_as_one_graph_in_channels_last_and_runs_under_bf16_autocast(models, arch: str) -> None:
    model = models[arch].eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            eager = model(x)
            # fullgraph=True fails on any graph break (Python-side shape logic, data-dependent code).
            compiled = torch.compile(model, backend="eager", fullgraph=True)(x)
            torch.testing.assert_close(compiled, eager)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(x)
        assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
    finally:
        model.to(memory_format=torch.contiguous_format)
        torch._dynamo.reset()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_hidden_shrinks_only_the_two_hidden_fc_layers(arch: str) -> None:
    full, small = build_model(arch, NUM_CLASSES), build_model(arch, NUM_CLASSES, hidden=64)
    linears = [m for m in small.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [64, 64, NUM_CLASSES] and linears[1].in_features == 64
    convs = lambda model: [p.shape for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()]  # noqa: E731
    assert convs(small) == convs(full)
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, NUM_CLASSES)
    with pytest.raises(UserError, match="hidden"):
        build_model(arch, NUM_CLASSES, hidden=0)
