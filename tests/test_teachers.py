"""Teacher entries, the safe checkpoint loader (every accepted layout, every failure) and FrozenTeacher."""

import os

import pytest
import torch
import torch.nn.functional as F

from trainables.models import MODELS, DMWideResNet, WideResNet, build_model
from trainables.registry import UnknownNameError
from trainables.teachers import (
    TEACHERS,
    FrozenTeacher,
    TeacherLoadError,
    TeacherSpec,
    build_teacher,
    default_checkpoint_path,
    get_teacher,
    list_teachers,
    load_state_dict_file,
    register_teacher,
    save_teacher_checkpoint,
)

DIGITS = "digits_cnn_small_trades"


@pytest.fixture
def net():
    """A cnn_small for 8x8 grey digits with non-default BatchNorm statistics (so a wrong load shows)."""
    torch.manual_seed(0)
    model = build_model("cnn_small", num_classes=10, in_channels=1)
    model.train()
    with torch.no_grad():
        model(torch.rand(64, 1, 8, 8) * 3)
    return model.eval()


@pytest.fixture
def x():
    return torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _load_digits(path):
    return build_teacher(DIGITS, path, num_classes=10, in_channels=1)


# --- accepted layouts -------------------------------------------------------------------
@pytest.mark.parametrize("layout", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model_state_dict": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {"model": sd, "config": {"seed": 0}},
    lambda sd: {"net": sd, "acc": 0.9},
    lambda sd: {"module." + k: v for k, v in sd.items()},
    lambda sd: {"_orig_mod." + k: v for k, v in sd.items()},
    lambda sd: {"state_dict": {"module._orig_mod." + k: v for k, v in sd.items()}},
    # Files from before BatchNorm counted its batches.
    lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
], ids=["plain", "state_dict", "model_state_dict", "model", "net", "module", "orig_mod", "nested", "old_bn"])
def test_accepted_layouts_load_the_same_weights(tmp_path, net, x, layout):
    path = tmp_path / "t.pt"
    torch.save(layout(net.state_dict()), path)
    teacher = _load_digits(path)
    torch.testing.assert_close(teacher(x), net(x), rtol=0, atol=0)


def test_save_teacher_checkpoint_round_trip(tmp_path, net, x):
    path = save_teacher_checkpoint(net, tmp_path / "sub" / f"{DIGITS}.pt", DIGITS,
                                   {"clean_acc": 0.9, "epochs": 3, "note": "ok", "aa": torch.tensor(0.5)})
    assert path.is_absolute() and path.is_file()
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["teacher"] == DIGITS
    assert blob["metrics"] == {"clean_acc": 0.9, "epochs": 3.0, "note": "ok", "aa": 0.5}
    assert isinstance(blob["metrics"]["epochs"], float)
    torch.testing.assert_close(_load_digits(path)(x), net(x), rtol=0, atol=0)
    # Saving a FrozenTeacher stores the plain network's keys, and overwriting is allowed.
    save_teacher_checkpoint(_load_digits(path), path, DIGITS, {})
    assert set(torch.load(path, weights_only=True)["state_dict"]) == set(net.state_dict())


def test_save_teacher_checkpoint_rejects_non_plain_metrics(tmp_path, net):
    with pytest.raises(TypeError, match="metric 'bad'"):
        save_teacher_checkpoint(net, tmp_path / "t.pt", DIGITS, {"bad": [1, 2]})
    assert not list(tmp_path.iterdir())


@pytest.fixture
def small_arch_teachers(monkeypatch):
    """Temporary small WRN architectures and teachers, so the real layouts are tested without 46M+ weights."""
    monkeypatch.setitem(MODELS._items, "test_wrn10_2", lambda k, c: WideResNet(10, 2, k, c))
    monkeypatch.setitem(MODELS._items, "test_dmwrn10_2", lambda k, c: DMWideResNet(10, 2, k, c))
    for name, arch in (("test_trades", "test_wrn10_2"), ("test_gowal", "test_dmwrn10_2")):
        monkeypatch.setitem(TEACHERS._items, name, TeacherSpec(name, arch, "cifar10", "trades", 8 / 255,
                                                              None, None, "checkpoint"))


def _bn_stats(model):
    """Non-default BatchNorm statistics, so a load that skipped them would show in the outputs."""
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, 16, 16))
    return model.eval()


def test_trades_layout_with_unused_sub_block1_loads(tmp_path, small_arch_teachers):
    torch.manual_seed(0)
    model = _bn_stats(WideResNet(10, 2, 10, 3))
    state = model.state_dict()
    # The TRADES code builds sub_block1 like block1 and never calls it; DataParallel added module.
    sub_block1 = {"sub_block1." + k[len("block1."):]: torch.randn_like(v.float()).to(v.dtype)
                  for k, v in state.items() if k.startswith("block1.")}
    assert sub_block1
    torch.save({"module." + k: v for k, v in {**state, **sub_block1}.items()}, tmp_path / "trades.pt")
    teacher = build_teacher("test_trades", tmp_path / "trades.pt", num_classes=10, in_channels=3)
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)
    assert not any(k.startswith("net.sub_block1") for k in teacher.state_dict())


def test_robustbench_dm_layout_without_mean_std_loads(tmp_path, small_arch_teachers):
    torch.manual_seed(0)
    model = _bn_stats(DMWideResNet(10, 2, 10, 3))
    # RobustBench's DMWideResNet keeps mean/std as plain attributes, so its files lack them.
    state = {k: v for k, v in model.state_dict().items() if k not in ("mean", "std")}
    torch.save(state, tmp_path / "gowal.pt")
    teacher = build_teacher("test_gowal", tmp_path / "gowal.pt", num_classes=10, in_channels=3)
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)
    assert teacher.net.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])


@pytest.mark.parametrize("shape", [(3, 1, 1), (3,), (1, 3, 1, 1)])
def test_robustbench_mean_std_in_any_per_channel_layout_load_and_are_used(tmp_path, small_arch_teachers, shape):
    torch.manual_seed(0)
    model = _bn_stats(DMWideResNet(10, 2, 10, 3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7)))
    # RobustBench's 2021 DMWideResNet registers mean/std as buffers shaped (3, 1, 1).
    state = {**model.state_dict(), "mean": model.mean.reshape(shape), "std": model.std.reshape(shape)}
    torch.save(state, tmp_path / "gowal.pt")
    teacher = build_teacher("test_gowal", tmp_path / "gowal.pt", num_classes=10, in_channels=3)
    assert teacher.net.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)


def test_mean_std_of_the_wrong_size_are_still_refused(tmp_path, small_arch_teachers):
    model = DMWideResNet(10, 2, 10, 3)
    torch.save({**model.state_dict(), "mean": torch.zeros(4, 1, 1)}, tmp_path / "gowal.pt")
    with pytest.raises(TeacherLoadError, match=r"shape mismatches \(file vs model\) \(1\): mean \(4, 1, 1\) vs \(1, 3, 1, 1\)"):
        build_teacher("test_gowal", tmp_path / "gowal.pt", num_classes=10, in_channels=3)


def test_a_cifar100_dm_teacher_without_mean_std_normalises_with_cifar100_statistics(tmp_path, monkeypatch):
    from trainables import models

    monkeypatch.setitem(MODELS._items, "test_dmwrn10_1", lambda k, c, dataset=None: DMWideResNet(10, 1, k, c, dataset=dataset))
    monkeypatch.setattr(models, "_TAKES_DATASET", {*models._TAKES_DATASET, "test_dmwrn10_1"})
    monkeypatch.setitem(TEACHERS._items, "test_gowal100", TeacherSpec("test_gowal100", "test_dmwrn10_1", "cifar100",
                                                                      "trades", 8 / 255, None, None, "checkpoint"))
    state = {k: v for k, v in DMWideResNet(10, 1, 100, 3).state_dict().items() if k not in ("mean", "std")}
    torch.save(state, tmp_path / "g100.pt")
    teacher = build_teacher("test_gowal100", tmp_path / "g100.pt", num_classes=100, in_channels=3)
    assert teacher.net.mean.flatten().tolist() == pytest.approx([0.5071, 0.4865, 0.4409])
    assert teacher.net.std.flatten().tolist() == pytest.approx([0.2673, 0.2564, 0.2762])


# --- failures ---------------------------------------------------------------------------
def test_missing_file_says_where_and_how(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(TeacherLoadError) as info:
        _load_digits(path)
    message = str(info.value)
    assert str(path) in message
    assert f"python -m search.teachers teachers.names=[{DIGITS}]" in message
    assert "train.teacher_checkpoint=" in message
    with pytest.raises(TeacherLoadError, match="Zhang2019Theoretically"):
        build_teacher("wrn34_10_trades", path, num_classes=10, in_channels=3)
    with pytest.raises(TeacherLoadError, match="not found"):
        load_state_dict_file(path)


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_corrupt_file_is_one_line_naming_the_file(tmp_path, net, kind):
    path = tmp_path / "corrupt.pt"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    else:
        torch.save(net.state_dict(), path)
        path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(TeacherLoadError) as info:
        _load_digits(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


CALLED = []


def _record_call():
    CALLED.append(True)
    return "pwned"


class Payload:
    """Unpickling this would call _record_call: weights_only must refuse before that happens."""

    def __reduce__(self):
        return (_record_call, ())


def test_pickled_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(TeacherLoadError) as info:
        _load_digits(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "Unsupported global" in message
    assert CALLED == []


@pytest.mark.parametrize("blob", [{"lr": 0.1, "epoch": 3}, [torch.zeros(2)], {}],
                         ids=["no-tensors", "list", "empty"])
def test_weights_file_without_a_state_dict(tmp_path, blob):
    path = tmp_path / "odd.pt"
    torch.save(blob, path)
    with pytest.raises(TeacherLoadError, match="not a state dict"):
        _load_digits(path)


def test_architecture_mismatch_names_file_arch_and_keys(tmp_path, net):
    path = tmp_path / "small.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(TeacherLoadError) as info:
        build_teacher("digits_cnn_medium_trades", path, num_classes=10, in_channels=1)
    message = str(info.value)
    assert message.startswith("architecture mismatch")
    assert str(path) in message and "cnn_medium" in message
    assert "missing keys" in message and "features.6.weight" in message  # a layer cnn_small lacks
    assert "\n" not in message
    # Right architecture, wrong class count: a shape mismatch on the head.
    with pytest.raises(TeacherLoadError, match=r"shape mismatches.*classifier\.weight \(10, 128\) vs \(3, 128\)"):
        build_teacher(DIGITS, path, num_classes=3, in_channels=1)


# --- FrozenTeacher ----------------------------------------------------------------------
def test_frozen_teacher_stays_eval_and_frozen(tmp_path, net, x):
    torch.save(net.state_dict(), tmp_path / "t.pt")
    teacher = _load_digits(tmp_path / "t.pt")
    assert isinstance(teacher, FrozenTeacher) and teacher.spec == get_teacher(DIGITS)
    assert all(not p.requires_grad for p in teacher.parameters())
    running = teacher.net.features[1].running_mean.clone()
    teacher.train()
    torch.nn.Sequential(teacher).train()  # a parent switching modes must not reach the net either
    assert not teacher.training and not any(m.training for m in teacher.modules())
    teacher(torch.rand(32, 1, 8, 8) * 5)
    torch.testing.assert_close(teacher.net.features[1].running_mean, running, rtol=0, atol=0)


def test_teacher_logits_are_usable_as_targets_of_a_student_loss(tmp_path, net, x):
    torch.save(net.state_dict(), tmp_path / "t.pt")
    teacher = _load_digits(tmp_path / "t.pt")
    student = build_model("cnn_small", num_classes=10, in_channels=1)
    x_adv = x.clone().requires_grad_(True)  # as inside an attack whose soft labels come from T(x')
    target = teacher(x_adv)
    assert not target.is_inference() and not target.requires_grad
    loss = F.kl_div(F.log_softmax(student(x_adv), dim=1), F.softmax(target, dim=1), reduction="batchmean")
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert x_adv.grad is not None


# --- registry -----------------------------------------------------------------------------
def test_every_teacher_arch_is_a_registered_model():
    for name in list_teachers():
        assert get_teacher(name).arch in MODELS, name


AWP_TEACHERS = ("wrn34_10_sat_awp", "wrn34_10_trades_awp")  # supplement Table 5; tests/test_table5.py


def test_table1_entries():
    expected = {
        "resnet18_trades": ("resnet18", 0.8193, 0.4923, ""),
        "resnet34_trades": ("resnet34", 0.8338, 0.5046, ""),
        "resnet50_trades": ("resnet50", 0.8425, 0.5047, ""),
        "wrn34_10_trades": ("wrn34_10", 0.8492, 0.5308, "Zhang2019Theoretically"),
        "wrn34_20_gowal": ("wrn34_20_swish", 0.8564, 0.5686, "Gowal2020Uncovering_34_20"),
        "wrn70_16_gowal": ("wrn70_16", 0.8529, 0.5720, "Gowal2020Uncovering_70_16"),
    }
    assert set(list_teachers("cifar10")) == set(expected) | set(AWP_TEACHERS)
    for name, (arch, clean, aa, rb) in expected.items():
        spec = get_teacher(name)
        assert (spec.arch, spec.clean_acc, spec.aa_acc, spec.robustbench_id) == (arch, clean, aa, rb)
        assert spec.eps == pytest.approx(8 / 255) and spec.aa_acc <= spec.clean_acc
        assert spec.source == ("robustbench" if rb else "checkpoint") and spec.notes


def test_digits_entries():
    assert list_teachers("digits") == ["digits_cnn_large_trades", "digits_cnn_medium_sat", "digits_cnn_medium_sat_awp",
                                       "digits_cnn_medium_trades", "digits_cnn_medium_trades_awp",
                                       "digits_cnn_small_trades"]
    for name in list_teachers("digits"):
        spec = get_teacher(name)
        assert (spec.source, spec.eps, spec.clean_acc, spec.aa_acc) == ("trained", 0.1, None, None)
        assert spec.method == name.split("_", 3)[3]  # digits_cnn_<size>_<method>


def test_registry_errors():
    with pytest.raises(UnknownNameError, match="wrn34_10_trades"):
        get_teacher("wrn34_10_trade")
    with pytest.raises(ValueError, match="already registered"):
        register_teacher(get_teacher(DIGITS))
    with pytest.raises(ValueError, match="dataset"):
        list_teachers("mnist")
    with pytest.raises(ValueError, match="source"):
        TeacherSpec("x", "cnn_small", "digits", "trades", 0.1, None, None, "internet")
    with pytest.raises(ValueError, match="fraction"):
        TeacherSpec("x", "cnn_small", "digits", "trades", 0.1, 84.9, None, "trained")


def test_default_checkpoint_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = default_checkpoint_path(DIGITS, "teachers")
    assert path.is_absolute() and path == tmp_path.resolve() / "teachers" / f"{DIGITS}.pt"
