"""The model zoo: every registered model builds and maps any input size/channels/classes to logits."""

import time

import pytest
import torch

from trainables.models import MODELS, DMWideResNet, WideResNet, build_model, list_models, register_model
from trainables.registry import UnknownNameError

# Real CPU forwards of the big models (and of ResNet-34/50 at 32x32) would make this file slow
# on a 2-core machine: every model is shape-checked on the meta device (no numbers, no time),
# and numbers are checked on real, smaller inputs and on small instances of the WRN classes.
BIG = {"wrn34_10", "wrn34_20", "wrn34_20_swish", "wrn70_16"}
SMALL = [n for n in list_models() if n not in BIG]
STUDENTS = ["resnet18", "mobilenet_v2", "cnn_small", "cnn_medium", "cnn_large"]
SHAPES = [(3, 32, 32, 10), (3, 32, 32, 100), (1, 8, 8, 10)]


def test_expected_names_are_registered():
    expected = {"resnet18", "resnet34", "resnet50", "mobilenet_v2", "wrn34_10", "wrn34_20", "wrn34_20_swish",
                "wrn70_16", "cnn_small", "cnn_medium", "cnn_large"}
    assert expected <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_model_maps_any_shape_to_logits(name):
    for channels, height, width, classes in SHAPES:
        with torch.device("meta"):
            model = build_model(name, num_classes=classes, in_channels=channels)
            out = model(torch.zeros(2, channels, height, width))
        assert out.shape == (2, classes)


@pytest.mark.parametrize("name", SMALL)
def test_real_forward_backward_on_8x8_grey(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1)
    out = model(torch.rand(2, 1, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", STUDENTS)
def test_real_forward_on_cifar_shape(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=100, in_channels=3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 100) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, params", [
    # WRN-34-10 (TRADES) is the well-known 46.16M; the DeepMind 70-16 is Gowal et al.'s "267M".
    ("wrn34_10", 46_160_474),
    ("wrn34_20", 184_531_674),
    ("wrn34_20_swish", 184_531_674),
    ("wrn70_16", 266_796_506),
])
def test_big_model_parameter_counts(name, params):
    with torch.device("meta"):
        model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("make", [lambda c, k: WideResNet(10, 2, k, c), lambda c, k: DMWideResNet(10, 2, k, c)])
def test_small_wideresnets_run_numerically(make):
    torch.manual_seed(0)
    for channels, height, width, classes in SHAPES:
        out = make(channels, classes).eval()(torch.rand(2, channels, height, width))
        assert out.shape == (2, classes) and torch.isfinite(out).all()


def _bn_keys(prefix):
    return [f"{prefix}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def test_wrn34_10_has_the_trades_parameter_names():
    expected = ["conv1.weight", *_bn_keys("bn1"), "fc.weight", "fc.bias"]
    for group in (1, 2, 3):
        for i in range(5):
            p = f"block{group}.layer.{i}"
            expected += [*_bn_keys(f"{p}.bn1"), f"{p}.conv1.weight", *_bn_keys(f"{p}.bn2"), f"{p}.conv2.weight"]
            if i == 0:
                expected.append(f"{p}.convShortcut.weight")
    with torch.device("meta"):
        keys = build_model("wrn34_10").state_dict().keys()
    assert sorted(keys) == sorted(expected)


def test_wrn70_16_has_the_robustbench_dmwideresnet_names():
    expected = ["mean", "std", "init_conv.weight", *_bn_keys("batchnorm"), "logits.weight", "logits.bias"]
    for group in range(3):
        for j in range(11):
            p = f"layer.{group}.block.{j}"
            expected += [*_bn_keys(f"{p}.batchnorm_0"), f"{p}.conv_0.weight",
                         *_bn_keys(f"{p}.batchnorm_1"), f"{p}.conv_1.weight"]
            if j == 0:
                expected.append(f"{p}.shortcut.weight")
    with torch.device("meta"):
        keys = build_model("wrn70_16").state_dict().keys()
    assert sorted(keys) == sorted(expected)


def test_dmwideresnet_normalises_inside_with_cifar10_stats():
    torch.manual_seed(0)
    model = DMWideResNet(10, 1, 10, 3).eval()
    assert model.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    assert model.std.flatten().tolist() == pytest.approx([0.2471, 0.2435, 0.2616])
    assert DMWideResNet(10, 1, 10, 1).mean.flatten().tolist() == [0.5]
    x = torch.rand(2, 3, 16, 16)
    # Same weights, no normalisation inside, fed pre-normalised input: must agree.
    identity = DMWideResNet(10, 1, 10, 3, mean=(0.0,) * 3, std=(1.0,) * 3).eval()
    identity.load_state_dict({**model.state_dict(), "mean": identity.mean, "std": identity.std})
    expected = identity((x - model.mean) / model.std)
    torch.testing.assert_close(model(x), expected)


def test_dmwideresnet_normalises_with_the_statistics_of_its_dataset(monkeypatch):
    from trainables.models.wideresnet import CIFAR10_MEAN, CIFAR100_MEAN, CIFAR100_STD

    def stats(model):
        return model.mean.flatten().tolist(), model.std.flatten().tolist()

    # RobustBench's CIFAR-100 values (an earlier version used CIFAR-10's for every dataset)
    assert stats(DMWideResNet(10, 1, 10, 3, dataset="cifar100")) == (pytest.approx([0.5071, 0.4865, 0.4409]),
                                                                     pytest.approx([0.2673, 0.2564, 0.2762]))
    assert stats(DMWideResNet(10, 1, 100, 3)) == (pytest.approx(CIFAR100_MEAN), pytest.approx(CIFAR100_STD))
    assert stats(DMWideResNet(10, 1, 10, 3, dataset="cifar10"))[0] == pytest.approx(CIFAR10_MEAN)
    assert stats(DMWideResNet(10, 1, 10, 1, dataset="digits")) == ([0.5], [0.5])
    # build_model hands `dataset` to the factories registered as taking it (the registered DM WRNs are
    # 50M+ parameters: a small stand-in under the same name checks the plumbing).
    seen = []
    monkeypatch.setitem(MODELS._items, "wrn70_16",
                        lambda k, c, dataset=None: seen.append(dataset) or DMWideResNet(10, 1, k, c, dataset=dataset))
    assert stats(build_model("wrn70_16", num_classes=10, dataset="cifar100"))[0] == pytest.approx(CIFAR100_MEAN)
    assert seen == ["cifar100"]
    assert build_model("resnet18", num_classes=100, dataset="cifar100") is not None  # the others ignore it


def test_other_models_do_not_normalise():
    for name in SMALL:
        buffers = {k for k, _ in build_model(name).named_buffers()}
        assert not buffers & {"mean", "std"}, name


def test_small_cnns_grow_in_capacity():
    sizes = [sum(p.numel() for p in build_model(n, 10, 1).parameters()) for n in ("cnn_small", "cnn_medium", "cnn_large")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_cnn_small_step_is_fast():
    torch.manual_seed(0)
    model = build_model("cnn_small", 10, 1)
    x = torch.rand(128, 1, 8, 8)
    model(x).sum().backward()  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model(x).sum().backward()
        times.append(time.perf_counter() - start)
    # "a few ms" on an idle core; the bound is loose so a busy CI machine does not flake.
    assert min(times) < 0.05


def test_builds_are_fresh():
    a, b = build_model("cnn_small"), build_model("cnn_small")
    assert a is not b and a.classifier.weight is not b.classifier.weight


def test_duplicate_register_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda num_classes, in_channels: torch.nn.Identity())
    assert MODELS.get("resnet18").__name__ == "resnet18"


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        build_model("resnet19")
    message = str(info.value)
    assert "resnet19" in message and "resnet18" in message and "cnn_small" in message


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="num_classes=0"):
        build_model("cnn_small", num_classes=0)
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(depth=12)
