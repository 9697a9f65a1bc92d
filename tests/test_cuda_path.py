"""What a CPU can check of the CUDA path: the precision policy, device selection, a compiled step
that never recompiles, and the per-epoch fixed costs (timed columns, best.pt not serialised twice).
tests/test_gpu.py checks the rest on a GPU."""
import csv
import functools
import json
import os

import pytest
import torch

import common
import train

SYNTH = ["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam", "--milestones",
         "--device", "cpu", "--cutmix-prob", "0.5", "--batch-size", "64"]


def run_train(tmp_path, name, *extra):
    return train.main(SYNTH + ["--runs-dir", str(tmp_path), "--name", name, *extra])


def fp32_policy():
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(conv, "fp32_precision"):
        return (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


#### Precision: one policy, set at start-up, recorded as what ran

def test_every_script_starts_in_ieee_float32_and_tf32_is_opt_in():
    common.set_tf32(True)
    on = fp32_policy()
    common.resolve_device("cpu")  # every script resolves its device first
    off = fp32_policy()
    assert on != off and off in (("ieee", "ieee"), (False, False))  # cuDNN's own default is TF32


def test_tf32_and_amp_say_what_they_do_where_they_cannot_apply(tmp_path, capsys):
    run_train(tmp_path, "t", "--epochs", "1", "--limit-train", "200", "--limit-test", "50", "--tf32")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["tf32"] is True and cfg["precision"] == "float32"  # what ran, not what was asked
    assert "--tf32 needs a CUDA GPU of compute capability 8.0 or newer" in capsys.readouterr().out


@pytest.mark.parametrize("capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_only_on_gpus_that_have_it(monkeypatch, capability, native):
    """V100 (7.0) and T4 (7.5) emulate bf16, slower than float32: --amp falls back there with a note."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    use_amp, note = common.autocast_mode(torch.device("cuda"), True)
    assert use_amp is native and (note is None) is native
    monkeypatch.setattr(common, "set_tf32", lambda enabled: None)
    precision, _ = common.precision_of(torch.device("cuda"), False, True)
    assert precision == ("tf32" if native else "float32")


def test_cuda_index_becomes_the_current_device(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert common.resolve_device("cuda:1") == torch.device("cuda:1")
    assert chosen == [torch.device("cuda:1")]
    with pytest.raises(common.UserError, match="no such device"):
        common.resolve_device("cuda:2")


#### A compiled step: one graph for the whole training, the same numbers as without it

def test_compiled_training_never_recompiles_and_matches_eager(tmp_path, monkeypatch):
    """1,000 images at batch 64 end in a tail batch of 40, which used to compile forward and
    backward again. aot_eager traces forward and backward as inductor does, without a C compiler."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    flags = ["--epochs", "2", "--limit-train", "1000", "--limit-test", "100"]
    run_train(tmp_path, "eager", *flags)
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # a recompile fails the run
    run_train(tmp_path, "compiled", *flags, "--compile")
    assert counters["stats"]["unique_graphs"] == 1
    a = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    cfg = json.loads((tmp_path / "compiled" / "config.json").read_text())
    assert cfg["compile"] == "default" and cfg["compile_seconds"] > 0
    eager_cfg = json.loads((tmp_path / "eager" / "config.json").read_text())
    assert eager_cfg["compile"] is False and eager_cfg["compile_seconds"] == 0


#### Per-epoch fixed costs

def test_history_says_where_each_epoch_went_and_best_is_last_at_its_epoch(tmp_path, monkeypatch):
    # Test accuracies 0.5, 0.7, 0.6: epoch 2 is the best, epoch 3 is not.
    accs = iter([0.5, 0.7, 0.6])
    monkeypatch.setattr(train, "evaluate_loader", lambda *a: (1.0, next(accs)))
    plots = []
    real_plot = train.plot_curves
    monkeypatch.setattr(train, "plot_curves", lambda h, p: plots.append(len(h)) or real_plot(h, p))
    saved = {}
    real_save = train.save_epoch

    def save(state, cfg, run_dir, is_best):
        real_save(state, cfg, run_dir, is_best)
        saved[state.epoch] = (run_dir / "last.pt").read_bytes()
    monkeypatch.setattr(train, "save_epoch", save)
    run_train(tmp_path, "h", "--epochs", "3", "--limit-train", "200", "--limit-test", "50")
    run = tmp_path / "h"
    assert plots == [3]  # curves drawn once, at the end, not after every epoch
    assert (run / "best.pt").read_bytes() == saved[2] != saved[3] == (run / "last.pt").read_bytes()
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert tuple(rows[0]) == train.HISTORY_FIELDS
    for r in rows:
        parts = [float(r[k]) for k in ("train_seconds", "test_seconds", "save_seconds")]
        assert all(p >= 0 for p in parts) and parts[2] > 0
        assert float(r["seconds"]) == pytest.approx(parts[0] + parts[1], abs=2e-3)


def test_link_or_copy_keeps_its_bytes_when_the_source_is_rewritten(tmp_path, monkeypatch):
    src, dst = tmp_path / "last.pt", tmp_path / "best.pt"
    common.save_checkpoint({"w": torch.ones(3)}, src)
    common.atomic_link_or_copy(src, dst)
    common.save_checkpoint({"w": torch.zeros(3)}, src)  # the next epoch's last.pt
    assert torch.equal(torch.load(dst, weights_only=True)["w"], torch.ones(3))

    def no_links(*a):
        raise OSError("links not supported")
    monkeypatch.setattr(os, "link", no_links)  # e.g. a FAT or some network file systems: a copy
    common.atomic_link_or_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes() and not src.samefile(dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary left


def test_a_resumed_run_keeps_the_save_time_of_its_boundary_epoch(tmp_path):
    flags = ["--epochs", "1", "--limit-train", "200", "--limit-test", "50"]
    run_train(tmp_path, "r", *flags)
    run = tmp_path / "r"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["history"][-1]["save_seconds"] is None  # written before its own duration was known
    ckpt["config"]["epochs"] = 2
    torch.save(ckpt, run / "last.pt")
    (run / "config.json").unlink()
    train.main(["--resume", "--name", "r", "--runs-dir", str(tmp_path), "--device", "cpu"])
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["save_seconds"]) > 0 for r in rows)
