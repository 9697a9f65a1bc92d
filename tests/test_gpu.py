"""CUDA only (skipped without a GPU): training steps never make the host wait for the GPU, the
compiled step compiles once, and the CUDA-specific settings are the ones train.py records.

A step that waits (a .item(), a copy of a Python list to the GPU, a copy from pageable memory)
empties the GPU's queue and puts Python's launch time on the critical path of every step.
torch.cuda.set_sync_debug_mode reports each such wait.
"""
import json
import warnings
from pathlib import Path

import pytest
import torch

import common
import train
from common import DeviceLoader, build_model, cutmix, make_synthetic

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"), pytest.mark.cuda]


def test_loader_cutmix_and_step_do_not_wait_for_the_gpu():
    ds = make_synthetic(640, 10)
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    loader = DeviceLoader(ds.train_x, ds.train_y, 128, [0.5] * 3, [0.25] * 3, dev, train=True,
                          augment="crop-flip", generator=g)
    model = build_model("resnet18", 10).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, fused=True)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step(x, y):
        x, y_a, y_b, lam = cutmix(x, y, 1.0, g)
        out = model(x)
        loss = lam * criterion(out, y_a) + (1 - lam) * criterion(out, y_b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    batches = iter(loader)
    step(*next(batches))  # the epoch's one upload and the first step's set-up may wait
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def epoch_setup(*flags, n=5000, batch=50):
    """What train_epoch needs for `flags` on the GPU, as train.py builds it, and the config."""
    parser = train.build_parser()
    args = parser.parse_args(["--dataset", "synthetic", "--batch-size", str(batch), "--cutmix-prob", "0.5",
                              "--label-smoothing", "0.1", "--device", "cuda", *flags])
    train.check_args(args, parser)
    device = common.resolve_device("cuda")
    ds = make_synthetic(n, 10)
    cfg = dict(vars(args), num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)
    return train.training_parts(cfg, None, ds, device), cfg


@pytest.mark.parametrize("flags", [("--arch", "simplecnn", "--optimizer", "adam"),
                                   ("--arch", "resnet18"), ("--arch", "resnet18", "--amp")])
def test_a_training_epoch_waits_for_the_gpu_only_at_its_checks(flags):
    """5,000 images at batch 50: 100 steps. Planned waits per epoch: the three uploads of the
    epoch's random draws, the NaN check every 50 steps and at the last, the two final means. One
    wait per step would give over 100."""
    parts, cfg = epoch_setup(*flags)
    state, loader = parts.state, parts.loader
    train.train_epoch(state, state.model, loader, cfg, parts.criterion, parts.amp_context, Path("."))  # first-call set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train.train_epoch(state, state.model, loader, cfg, parts.criterion, parts.amp_context, Path("."))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    waits = [w for w in caught if "synchroniz" in str(w.message).lower()]
    planned = 3 + (len(loader) // 50 + 1) + 2
    assert len(waits) <= planned, f"{len(waits)} host waits in {len(loader)} steps; first: {waits[0].message}"


def test_the_compiled_step_compiles_once_with_a_tail_batch(tmp_path):
    """1,000 images at batch 64 end in a batch of 40: it runs eagerly, nothing is compiled again."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    argv = ["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam", "--milestones",
            "--epochs", "2", "--batch-size", "64", "--limit-train", "1000", "--limit-test", "200",
            "--cutmix-prob", "0.5", "--amp", "--compile", "--runs-dir", str(tmp_path), "--name", "c",
            "--device", "cuda"]
    old = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True
    try:
        train.main(argv)
    finally:
        torch._dynamo.config.error_on_recompile = old
    assert counters["stats"]["unique_graphs"] == 1
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["compile_seconds"] > 0 and cfg["precision"] == "bf16 autocast"


def test_precision_is_recorded_as_run_and_float32_is_ieee(tmp_path):
    argv = ["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam", "--milestones",
            "--epochs", "1", "--limit-train", "500", "--limit-test", "100", "--runs-dir", str(tmp_path),
            "--device", "cuda"]
    train.main(argv + ["--name", "f"])
    assert json.loads((tmp_path / "f" / "config.json").read_text())["precision"] == "float32"
    conv = getattr(torch.backends.cudnn, "conv", None)
    assert (conv.fp32_precision == "ieee") if hasattr(conv, "fp32_precision") else not torch.backends.cudnn.allow_tf32
    train.main(argv + ["--name", "t", "--tf32"])
    expected = "tf32" if common.cuda_ampere_or_newer(torch.device("cuda")) else "float32"
    assert json.loads((tmp_path / "t" / "config.json").read_text())["precision"] == expected
