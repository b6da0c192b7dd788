"""The benchmarks run end to end on tiny settings and compare like with like (no timings are asserted)."""

import pytest

from benchmarks import rslad_epoch


def test_rslad_epoch_benchmark_runs_all_variants_on_a_tiny_epoch(capsys, monkeypatch):
    from trainables.teachers import TEACHERS

    monkeypatch.setattr(TEACHERS, "_items", dict(TEACHERS._items))  # its benchmark_* teacher entry stays here
    rslad_epoch.main(["--device", "cpu", "--student", "cnn_small", "--teacher", "cnn_small", "--images", "256",
                      "--batch-size", "64", "--repeats", "1"])
    out = capsys.readouterr().out
    for row in ("reference-style loop", "fit() (Training.run_epoch)", "cache, cold", "cache, warm", "cache warm / fit()",
                "teacher forward share"):
        assert row in out
    assert "real CIFAR-10" in out or "random uint8" in out
    monkeypatch.undo()
    assert "benchmark_cnn_small" not in TEACHERS


@pytest.mark.parametrize("argv, message", [(["--rsl-source", "nat-nat"], "invalid choice: 'nat-nat'"),
                                           (["--teacher", "wrn99"], "invalid choice: 'wrn99'"),
                                           (["--repeats", "0"], "0 is not an integer >= 1")])
def test_bad_options_are_one_line_usage_errors_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        rslad_epoch.parse_args(["--device", "cpu", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
