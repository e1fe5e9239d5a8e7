"""The ``vithub`` command: list, info, bench kernels; and the catalogue helpers behind them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from vithub import catalog as models, cli
from vithub.bench.kernels import run_kernel_bench


def test_summarize_counts_params_and_macs_of_a_known_model():
    # resnet18 at 224: 11.69M parameters and 1.82 GMACs (timm's published numbers).
    row = models.summarize("resnet18")
    assert row.params_m == pytest.approx(11.69, abs=0.01)
    assert row.gmacs == pytest.approx(1.82, abs=0.01)
    assert row.input_size == (3, 224, 224)
    assert "a1_in1k" in row.pretrained_tags


def test_list_json_lists_exactly_the_vh_models(capsys):
    assert cli.main(["list", "--json", "--no-macs"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == models.list_vithub_models()


def test_info_prints_cfg_and_feature_info(capsys):
    assert cli.main(["info", "resnet18.a1_in1k"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "resnet18"
    assert info["pretrained_cfg"]["input_size"] == [3, 224, 224]
    assert [f["reduction"] for f in info["feature_info"]] == [2, 4, 8, 16, 32]


def test_unknown_model_gets_close_matches(capsys):
    assert cli.main(["info", "resnet_18"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet_18'" in err and "resnet18" in err


def test_bad_bench_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "kernels", "--repeats", "0"])
    assert "--repeats must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an unknown target is an error, never some other benchmark
        cli.main(["bench", "kernel"])
    assert "invalid choice: 'kernel'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # each target owns its flags
        cli.main(["bench", "data", "--models", "vh_nat_tiny"])
    assert "unrecognized arguments: --models" in capsys.readouterr().err


def test_kernel_bench_writes_table_and_json(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vithub")  # the table goes through vithub's loggers
    output = tmp_path / "results" / "kernels.json"
    payload = run_kernel_bench(
        output=str(output), repeats=1,
        na_shapes=[("tiny_na", 1, 10, 9, 2, 8, 3, None)],
        window_shapes=[("tiny_window", 1, 8, 8, 2, 8, 4, 2)],
    )
    table = caplog.text
    assert "tiny_na" in table and "tiny_window" in table
    saved = json.loads(output.read_text())
    assert saved == payload
    na_rows = [row for row in saved["rows"] if row["op"] == "neighborhood"]
    assert {row["mode"] for row in na_rows} == {"fwd", "fwd+bwd"}
    assert all({"torch", "floor", "reference"} <= set(row["ms"]) for row in na_rows)
    window_ops = {row["op"] for row in saved["rows"]}
    assert window_ops == {"neighborhood", "window", "window_block"}
    assert all(value > 0 for row in saved["rows"] for value in row["ms"].values())
    for row in saved["rows"]:
        others = {name for name in row["ms"] if name != "torch"}
        assert set(row["speedups"]) == {f"torch_speedup_vs_{name}" for name in others}
        for name in others:
            expected = row["ms"][name] / row["ms"]["torch"]
            # Speedups are stored rounded to 3 decimals.
            assert row["speedups"][f"torch_speedup_vs_{name}"] == pytest.approx(expected, abs=5.1e-4)
    assert not list(output.parent.glob("*.tmp"))


def test_console_script_and_module_entry_points():
    console_script = str(Path(sys.executable).with_name("vithub"))
    for command in ([console_script, "list", "--no-macs"], [sys.executable, "-m", "vithub", "list", "--no-macs"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr


def test_model_bench_writes_table_and_json(tmp_path, caplog, monkeypatch):
    from vithub.bench import models as bench_models

    caplog.set_level(logging.INFO, logger="vithub")  # the table goes through vithub's loggers

    monkeypatch.setattr(bench_models, "REFERENCE_TRAIN_MAX_BATCH", 0)  # exercise the skip path cheaply
    output = tmp_path / "models.json"
    payload = bench_models.run_model_bench(output=str(output), models=["vh_nat_mini"], batch_sizes=[1],
                                           backends=["torch", "reference"], repeats=1, img_size=32)
    table = caplog.text
    assert "vh_nat_mini" in table and "skipped" in table
    saved = json.loads(output.read_text())
    assert saved == json.loads(json.dumps(payload))
    eval_row, train_row = saved["rows"]
    assert (eval_row["mode"], train_row["mode"]) == ("eval", "train")
    assert set(eval_row["images_per_second"]) == {"torch", "reference"}
    assert all(value > 0 for value in eval_row["images_per_second"].values())
    assert set(train_row["images_per_second"]) == {"torch"} and "reference" in train_row["skipped"]


def test_bad_model_bench_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "models", "--batch-sizes", "0"])
    assert "--batch-sizes must all be >= 1" in capsys.readouterr().err
    assert cli.main(["bench", "models", "--models", "vh_nat_tinyy", "--output", ""]) == 2
    assert "close matches: vh_nat_tiny" in capsys.readouterr().err
    assert cli.main(["bench", "models", "--compare-import", "no_such_package_xyz", "--output", ""]) == 2
    assert "cannot import 'no_such_package_xyz'" in capsys.readouterr().err


def test_model_bench_twin_with_same_weights_and_fused(tmp_path, capsys):
    from vithub.bench import models as bench_models

    payload = bench_models.run_model_bench(output=str(tmp_path / "twin.json"), models=["vh_efficientvit_m0"],
                                           batch_sizes=[2], backends=["torch"], repeats=1, img_size=64, twin=True,
                                           fused=True)
    eval_row, train_row = payload["rows"]
    assert set(eval_row["images_per_second"]) == {"torch", "fused", "efficientvit_m0"}
    assert set(train_row["images_per_second"]) == {"torch", "efficientvit_m0"} and "fused" in train_row["skipped"]
    assert payload["same_weights_as_twin"] is True
    ours, twin = timm.create_model("vh_efficientvit_m0"), timm.create_model("efficientvit_m0")
    bench_models.load_twin_weights(ours, twin)  # the same weights: equal outputs
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), twin.eval()(x), rtol=1e-5, atol=1e-5)
    assert cli.main(["bench", "models", "--models", "vh_nat_mini", "--twin", "--output", ""]) == 2
    assert "has no timm twin" in capsys.readouterr().err


def test_model_bench_in_separate_processes_keeps_medians_and_the_spread_of_each_ratio(tmp_path, caplog):
    from vithub.bench import models as bench_models

    caplog.set_level(logging.INFO, logger="vithub")

    output = tmp_path / "runs.json"
    payload = bench_models.run_model_bench(output=str(output), models=["vh_efficientvit_m0"], batch_sizes=[2],
                                           modes=["eval"], backends=["torch"], repeats=1, img_size=64, twin=True,
                                           fused=True, processes=2)
    assert json.loads(output.read_text()) == payload
    assert payload["processes"] == 2 and payload["threads"] >= 1 and payload["cpu"]
    (row,) = payload["rows"]
    for name in ("torch", "fused", "efficientvit_m0"):
        assert len(row["ms_runs"][name]) == 2
        assert row["ms"][name] == pytest.approx(sum(row["ms_runs"][name]) / 2, abs=1e-3)  # median of two
    for name in ("torch", "fused"):
        ratio = row["speed_vs_twin"][name]
        expected = [round(twin / ours, 3) for twin, ours in zip(row["ms_runs"]["efficientvit_m0"],
                                                                 row["ms_runs"][name])]
        assert ratio["runs"] == expected
        assert ratio["min"] == min(expected) <= ratio["median"] <= ratio["max"] == max(expected)
    assert row["speed_vs"] == {"efficientvit_m0": row["speed_vs_twin"]}
    assert any(record.getMessage() == "-- median of 2 processes" for record in caplog.records)
    # A model timed beside ours that is not its twin (the official FasterViT, say) gets the same ratios.
    payload = bench_models.run_model_bench(output="", models=["vh_efficientvit_m0"], batch_sizes=[1], modes=["eval"],
                                           backends=["torch"], repeats=1, img_size=64, compare=["efficientvit_m1"])
    (row,) = payload["rows"]
    assert "speed_vs_twin" not in row
    assert row["speed_vs"]["efficientvit_m1"]["torch"]["runs"] == [round(row["ms"]["efficientvit_m1"]
                                                                         / row["ms"]["torch"], 3)]
    with pytest.raises(ValueError, match="processes must be >= 1"):
        bench_models.run_model_bench(output="", processes=0)


def test_kernel_bench_dense_ops(tmp_path):
    payload = run_kernel_bench(output=str(tmp_path / "dense.json"), repeats=1, quick=True, ops=["table", "linear"])
    rows = {(row["op"], row["mode"]): row for row in payload["rows"]}
    assert set(rows) == {(op, mode) for op in ("table_bias", "relu_linear") for mode in ("fwd", "fwd+bwd")}
    assert set(rows[("table_bias", "fwd")]["ms"]) == {"torch", "sdpa", "timm_core"}
    assert set(rows[("relu_linear", "fwd+bwd")]["ms"]) == {"torch", "timm_core"}
    assert all(value > 0 for row in payload["rows"] for value in row["ms"].values())


def test_kernel_bench_unfused_ops(tmp_path):
    shapes = [("tiny_2d", 1, (9, 8), 2, 8, 3, 2), ("tiny_1d", 1, (20,), 2, 8, 5, 1)]
    payload = run_kernel_bench(output=str(tmp_path / "unfused.json"), repeats=1, ops=["unfused"],
                               unfused_shapes=shapes)
    rows = {(row["shape"], row["mode"]): row for row in payload["rows"]}
    assert set(rows) == {(shape, mode) for shape in ("tiny_2d", "tiny_1d") for mode in ("fwd", "fwd+bwd")}
    assert set(rows[("tiny_2d", "fwd")]["ms"]) == {"torch", "fused", "reference"}
    assert set(rows[("tiny_1d", "fwd+bwd")]["ms"]) == {"torch", "reference"}  # the fused op is 2-D only
    assert all(row["op"] == "unfused_na" and row["rpb"] for row in payload["rows"])


def test_bench_writes_into_the_current_directory_by_default(tmp_path, monkeypatch, capsys):
    """Benchmark results land where the user runs the command, never inside the installed source tree."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "data", "--images", "8", "--image-side", "32", "--repeats", "1", "--batch-size", "4",
                     "--workers", "0", "1", "--epoch-model", "vh_efficientvit_m0"]) == 0
    payload = json.loads((tmp_path / "data_pipeline_cpu.json").read_text())
    assert payload["images"] == 8 and set(payload["reader"]["median_ms"]) == {"timm ImageDataset", "ReadableSamples"}
    assert [row["workers"] for row in payload["pipeline"]] == [0, 1]
    assert all(row["images"] == 8 and row["speed_ratio_vithub_over_timm"] > 0 for row in payload["pipeline"])
    assert 0 < payload["training_epoch"]["data_wait"] < 1 and payload["training_epoch"]["model"] == "vh_efficientvit_m0"
    assert "ReadableSamples / timm ImageDataset time" in capsys.readouterr().out
    # -q (before or after the subcommand) leaves the table out: library messages go through vithub's loggers.
    for flags in (["-q", "bench", "data"], ["bench", "data", "-q"]):
        assert cli.main([*flags, "--images", "4", "--image-side", "32", "--repeats", "1", "--output", "",
                         "--batch-size", "4", "--workers", "0", "--epoch-model", ""]) == 0
        assert "ReadableSamples / timm" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "data", "--workers", "-1"])


def test_each_bench_target_keeps_its_defaults():
    """The table's defaults are the ones the flat parser had: repeats per target, batches 1 8 32 where a target
    times batch sizes, and the dense benches' CPU/GPU sizes."""
    from vithub.bench.cli import _dense_settings

    parser = cli.build_parser()
    defaults = {target: parser.parse_args(["bench", target]) for target in
                ("kernels", "models", "gpu", "data", "detection", "segmentation", "tokens", "export")}
    assert {target: args.repeats for target, args in defaults.items()} == {
        "kernels": 7, "models": 3, "gpu": 20, "data": 3, "detection": 3, "segmentation": 3, "tokens": 3, "export": 3}
    assert all(defaults[target].batch_sizes == [1, 8, 32] for target in ("models", "tokens", "export"))
    detection = defaults["detection"]
    assert _dense_settings(detection, (320, 800), 8) == {"img_size": 320, "batch_size": 2, "repeats": 3,
                                                         "device": "cpu", "amp": None}
    detection.device = "cuda"
    assert _dense_settings(detection, (320, 800), 8)["img_size"] == 800
    assert _dense_settings(detection, (320, 800), 8)["amp"] == "bfloat16"
