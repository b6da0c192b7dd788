"""The supplement's Table 5: the AWP teachers (registry, RobustBench layout), the RSLAD* recipe, row matching, spaces, the smoke path."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from analysis import paper
from trainables.config import TrainConfig
from trainables.loop import Training
from trainables.methods import METHODS
from trainables.models import MODELS, build_model
from trainables.models.wideresnet import WideResNet
from trainables.recipes import PAPER_EPOCHS, get_recipe, recipe_overrides
from trainables.teachers import TEACHERS, TeacherSpec, build_teacher, get_teacher, list_teachers, save_teacher_checkpoint
from spaces import SPACES_DIR

# Table 5 as printed (best, then last: clean, PGD_TRADES, AA); the rows but RSLAD* repeat Table 4's.
TABLE5 = {
    "Natural": ((94.65, 0.0, 0.0), (94.65, 0.0, 0.0)),
    "SAT": ((83.38, 51.11, 45.83), (84.44, 48.72, 43.64)),
    "TRADES": ((81.93, 53.68, 49.23), (82.20, 53.66, 49.27)),
    "RSLAD, teacher WRN-34-10 (the paper's setting)": ((83.38, 55.94, 51.49), (83.33, 55.61, 51.32)),
    "RSLAD* (SAT+AWP teacher)": ((83.87, 56.78, 51.62), (84.03, 56.52, 51.09)),
}
RSLAD = {"dataset": "cifar10", "student": "resnet18", "method": "rslad", "teacher_arch": "wrn34_10",
         "rsl_source": "nat-nat-nat", "alpha": 5 / 6, "eps": 8 / 255, "epochs": 300}
DIGITS = dict(dataset="digits", eps=0.1, attack_step_size=0.025, attack_steps=3, train_subset=192, batch_size=64,
              val_size=64, device="cpu", epochs=1)


def labels(setting: dict) -> list[str]:
    return [row.label for row in paper.match_rows(setting)]


# --- teachers -----------------------------------------------------------------------------------
def test_awp_teacher_entries():
    sat_awp, trades_awp = get_teacher("wrn34_10_sat_awp"), get_teacher("wrn34_10_trades_awp")
    assert (sat_awp.arch, sat_awp.dataset, sat_awp.method, sat_awp.source) == ("wrn34_10", "cifar10", "sat_awp", "trained")
    assert (sat_awp.clean_acc, sat_awp.aa_acc) == (None, 0.54) and sat_awp.eps == pytest.approx(8 / 255)
    assert (trades_awp.arch, trades_awp.method, trades_awp.source, trades_awp.robustbench_id) == (
        "wrn34_10", "trades_awp", "robustbench", "Wu2020Adversarial")
    assert (trades_awp.clean_acc, trades_awp.aa_acc) == (0.8536, 0.5617)
    assert "Table 5" in sat_awp.notes and "Wu2020Adversarial" in trades_awp.notes and "no normalisation" in trades_awp.notes
    assert {get_teacher(n).method for n in ("digits_cnn_medium_sat_awp", "digits_cnn_medium_trades_awp")} == {
        "sat_awp", "trades_awp"}
    # every teacher's training method is one this library can train with
    assert all(get_teacher(n).method in METHODS for n in list_teachers())
    # `python -m search.teachers` trains the `trained` entries of the profile's dataset
    assert [n for n in list_teachers("cifar10") if get_teacher(n).source == "trained"] == ["wrn34_10_sat_awp"]


class RBBasicBlock(nn.Module):
    """RobustBench model_zoo/architectures/wide_resnet.py BasicBlock (dropRate 0), transcribed."""

    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equalInOut = (in_planes == out_planes)
        self.convShortcut = (not self.equalInOut) and nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride,
                                                                padding=0, bias=False) or None

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class RBNetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(*[RBBasicBlock(i == 0 and in_planes or out_planes, out_planes, i == 0 and stride or 1)
                                     for i in range(int(nb_layers))])

    def forward(self, x):
        return self.layer(x)


class RBWideResNet(nn.Module):
    """RobustBench's WideResNet as model_zoo/cifar10.py builds Wu2020Adversarial: WideResNet(depth=34, widen_factor=10)."""

    def __init__(self, depth=34, num_classes=10, widen_factor=10):
        super().__init__()
        n_channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) / 6
        self.conv1 = nn.Conv2d(3, n_channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = RBNetworkBlock(n, n_channels[0], n_channels[1], 1)  # sub_block1=False: no sub_block1
        self.block2 = RBNetworkBlock(n, n_channels[1], n_channels[2], 2)
        self.block3 = RBNetworkBlock(n, n_channels[2], n_channels[3], 2)
        self.bn1 = nn.BatchNorm2d(n_channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(n_channels[3], num_classes, bias=True)
        self.nChannels = n_channels[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.avg_pool2d(out, 8).view(-1, self.nChannels))


def test_wu2020adversarial_has_robustbenchs_layout_and_no_normalisation(tmp_path, monkeypatch):
    with torch.device("meta"):  # shapes only: no 46M weights are drawn
        ours, theirs = build_model("wrn34_10", 10, 3, dataset="cifar10").state_dict(), RBWideResNet().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert not any(k in ("mean", "std") or k.startswith("sub_block1") for k in theirs)
    # the same function: a small RobustBench WRN's file, loaded strictly as the entry loads it, gives its logits
    monkeypatch.setitem(MODELS._items, "test_wrn10_2", lambda k, c: WideResNet(10, 2, k, c))
    spec = get_teacher("wrn34_10_trades_awp")
    monkeypatch.setitem(TEACHERS._items, "test_trades_awp", TeacherSpec(
        "test_trades_awp", "test_wrn10_2", spec.dataset, spec.method, spec.eps, None, None, "checkpoint"))
    torch.manual_seed(0)
    rb = RBWideResNet(depth=10, widen_factor=2).train()
    with torch.no_grad():
        rb(torch.rand(16, 3, 32, 32))  # BatchNorm statistics away from their defaults
    torch.save({"module." + k: v for k, v in rb.state_dict().items()}, tmp_path / "wu.pt")
    teacher = build_teacher("test_trades_awp", tmp_path / "wu.pt", num_classes=10, in_channels=3)
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(teacher(x), rb.eval()(x), rtol=1e-5, atol=1e-5)


# --- the RSLAD* recipe and the rows -------------------------------------------------------------
def test_rslad_awp_teacher_recipe_is_rslad_with_the_sat_awp_teacher():
    recipe, rslad = get_recipe("rslad_awp_teacher"), get_recipe("rslad")
    assert recipe.fields() == rslad.fields() and (recipe.teacher_method, rslad.teacher_method) == ("sat_awp", "")
    assert [r.label for r in paper.ROWS if r.label == recipe.row] == ["RSLAD* (SAT+AWP teacher)"]
    cfg = TrainConfig.from_dict({**recipe_overrides("rslad_awp_teacher", PAPER_EPOCHS), "teacher": "wrn34_10_sat_awp"})
    assert (cfg.method, cfg.epochs, cfg.milestone_epochs(), cfg.alpha, cfg.recipe) == (
        "rslad", 300, [215, 260, 285], 5 / 6, "rslad_awp_teacher")
    assert get_teacher(cfg.teacher).method == recipe.teacher_method


def test_table5_numbers_are_the_matched_rows():
    settings = {
        "Natural": {**RSLAD, "method": "natural", "teacher_arch": None, "epochs": 100},
        "SAT": {**RSLAD, "method": "sat", "teacher_arch": None, "epochs": 100},
        "TRADES": {**RSLAD, "method": "trades", "teacher_arch": None, "epochs": 100},
        "RSLAD, teacher WRN-34-10 (the paper's setting)": {**RSLAD, "teacher": "wrn34_10_trades"},
        "RSLAD* (SAT+AWP teacher)": {**RSLAD, "teacher": "wrn34_10_sat_awp"},
    }
    for label, (best, last) in TABLE5.items():
        row = paper.match_rows(settings[label])[0]
        assert row.label == label
        for published, numbers in ((row.best, best), (row.last, last)):
            assert tuple(published[c] for c in ("clean", "pgd_trades", "autoattack")) == numbers


def test_rows_match_on_how_the_teacher_was_trained():
    star, paper_rslad = "RSLAD* (SAT+AWP teacher)", "RSLAD, teacher WRN-34-10 (the paper's setting)"
    assert labels({**RSLAD, "teacher": "wrn34_10_sat_awp"}) == [star]
    assert labels({**RSLAD, "teacher_method": "sat_awp"}) == [star]
    assert labels({**RSLAD, "teacher": "wrn34_10_trades"}) == [paper_rslad]
    # no teacher named: the paper's TRADES teacher, as before Table 5 was matched
    assert labels(RSLAD) == [paper_rslad]
    # the public TRADES + AWP teacher has no published student row
    assert labels({**RSLAD, "teacher": "wrn34_10_trades_awp"}) == []
    # a recipe label names its row; a teacher known to contradict it matches nothing
    assert labels({**RSLAD, "recipe": "rslad_awp_teacher"}) == [star]
    assert labels({**RSLAD, "recipe": "rslad_awp_teacher", "teacher": "wrn34_10_trades"}) == []
    assert labels({**RSLAD, "recipe": "rslad", "teacher": "wrn34_10_sat_awp"}) == []
    ard = {**RSLAD, "method": "ard", "epochs": 200}
    assert labels({**ard, "teacher": "wrn34_10_trades"}) == ["ARD", "ARD-300"]
    assert labels({**ard, "teacher": "wrn34_10_sat_awp"}) == []
    assert labels({**RSLAD, "teacher": "wrn34_10_sat_awp", "dataset": "digits", "student": "cnn_small"}) == []


def test_report_puts_table5_beside_its_trials():
    from analysis.report import compare_section

    base = {"dataset": "cifar10", "student": "resnet18", "teacher": "none", "eps": 8 / 255, "alpha": 5 / 6,
            "rsl_source": "nat-nat-nat"}
    trials = pd.DataFrame([
        {**base, "trial_id": "s", "method": "sat", "recipe": "sat", "epochs": 100},
        {**base, "trial_id": "t", "method": "trades", "recipe": "trades", "epochs": 100},
        {**base, "trial_id": "r", "method": "rslad", "recipe": "rslad", "teacher": "wrn34_10_trades", "epochs": 300},
        {**base, "trial_id": "a", "method": "rslad", "recipe": "rslad_awp_teacher", "teacher": "wrn34_10_sat_awp",
         "epochs": 300},
    ])
    text = "\n".join(compare_section(trials))
    published = [line.split("|")[2].strip() for line in text.splitlines() if "| Table" in line]
    assert published == ["Table 4: SAT"] * 2 + ["Table 4: TRADES"] * 2 + [
        "Tables 2-4: RSLAD, teacher WRN-34-10 (the paper's setting)"] * 2 + ["Table 5: RSLAD* (SAT+AWP teacher)"] * 2


# --- spaces ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["teacher", "joint"])
def test_the_awp_teachers_can_be_chosen(name):
    data = yaml.safe_load((SPACES_DIR / f"{name}.yaml").read_text())
    paper_values = data["params"]["teacher"]["values"]
    smoke_values = data["profiles"]["smoke"]["params"]["teacher"]["values"]
    assert {"wrn34_10_sat_awp", "wrn34_10_trades_awp"} <= set(paper_values)
    assert {"digits_cnn_medium_sat_awp", "digits_cnn_medium_trades_awp"} <= set(smoke_values)
    assert {get_teacher(n).dataset for n in paper_values} == {"cifar10"}
    assert {get_teacher(n).dataset for n in smoke_values} == {"digits"}
    if name == "teacher":  # every teacher is tried once, the AWP ones included
        assert [p["teacher"] for p in data["points_to_evaluate"]] == [
            "wrn34_10_trades", *(n for n in paper_values if n != "wrn34_10_trades")]
        assert len(smoke_values) <= data["profiles"]["smoke"]["budget"]["num_samples"]
        assert {p["teacher"] for p in data["profiles"]["smoke"]["points_to_evaluate"]} == set(smoke_values)


# --- the smoke path, offline --------------------------------------------------------------------------
def test_smoke_awp_teacher_trains_and_teaches(tmp_path):
    spec = get_teacher("digits_cnn_medium_sat_awp")
    teacher_cfg = TrainConfig.from_dict({**DIGITS, "student": spec.arch, "method": spec.method, "teacher": "none"})
    training = Training(teacher_cfg)
    metrics = next(iter(training))
    assert math.isfinite(metrics["train_loss"]) and training.method._pending is None
    # where the registry looks for it: teachers_dir/<name>.pt
    save_teacher_checkpoint(training.model, tmp_path / f"{spec.name}.pt", spec.name, metrics)
    student = Training(TrainConfig.from_dict({**DIGITS, "student": "cnn_small", "method": "rslad", "teacher": spec.name,
                                              "teachers_dir": str(tmp_path)}))
    assert student.teacher is not None and math.isfinite(student.run_epoch()["train_loss"])
