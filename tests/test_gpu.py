"""CUDA only (skipped without a GPU): training steps never make the host wait for the GPU.

A step that waits (a .item(), a copy of a Python list to the GPU, a copy from pageable memory)
empties the GPU's queue and puts Python's launch time on the critical path of every step.
torch.cuda.set_sync_debug_mode reports each such wait.
"""
import warnings

import pytest
import torch

import train
from common import DeviceLoader, build_model, cutmix, make_synthetic

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_loader_cutmix_and_step_do_not_wait_for_the_gpu():
    ds = make_synthetic(640, 10)
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    loader = DeviceLoader(ds.train_x, ds.train_y, 128, [0.5] * 3, [0.25] * 3, dev, train=True,
                          augment="crop-flip", generator=g)
    model = build_model("resnet18", 10).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
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


def test_train_does_not_wait_for_the_gpu_at_every_step(tmp_path):
    # 5,000 synthetic images at batch 10: 500 steps. Planned waits: a check every 50 steps, and per
    # epoch the test pass and the checkpoints (one per saved tensor, about 80 for this SimpleCNN
    # and its Adam state, twice). One wait per step would give over 500.
    argv = ["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam", "--epochs", "1",
            "--batch-size", "10", "--cutmix-prob", "0.5", "--runs-dir", str(tmp_path),
            "--name", "sync", "--device", "cuda"]
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train.main(argv)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    waits = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(waits) < 250, f"{len(waits)} host waits in 500 steps; first: {waits[0].message}"
