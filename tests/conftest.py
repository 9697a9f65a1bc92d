"""Fixtures shared by several test files, built once per session by the project's own scripts.

They are read-only for the tests that use them: a test that damages a file works on a copy.
"""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import evaluate
import failures
import gradcam
import train


CUDA_AVAILABLE = torch.cuda.is_available


@pytest.fixture(scope="session", autouse=True)
def cpu_by_default():
    """The suite checks the CPU path, bit for bit where it compares two runs, and tests/test_gpu.py
    (marked cuda) the CUDA one. On a CUDA machine --device auto would pick the GPU, with other
    kernels (and cuDNN autotuning): every unmarked test sees no GPU, as on CI; subprocesses that
    train are given --device cpu."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        yield


@pytest.fixture(autouse=True)
def cuda_when_marked(request, monkeypatch):
    if request.node.get_closest_marker("cuda"):
        monkeypatch.setattr(torch.cuda, "is_available", CUDA_AVAILABLE)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """SimpleCNN, 1 epoch on 640 synthetic images, tested on 60, as make study leaves a baseline:
    evaluated, its 3 failure cases selected and explained. Near chance, which is all the command
    lines and the run-folder contract need (a few seconds on 2 cores)."""
    runs = tmp_path_factory.mktemp("runs")
    result = train.main(["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam",
                         "--epochs", "1", "--batch-size", "64", "--milestones", "--limit-train", "640",
                         "--limit-test", "60", "--runs-dir", str(runs), "--name", "tiny", "--device", "cpu",
                         "--data-dir", str(runs / "data")])
    run = Path(result["run_dir"])
    evaluate.main(["--run", str(run), "--device", "cpu"])
    failures.main(["--run", str(run), "--num-cases", "3"])
    gradcam.main(["--run", str(run), "--device", "cpu"])
    return run


def make_folder(root, classes=("cat", "dog"), per_class=3, size=32):
    """An ImageFolder tree (train/<class>/, test/<class>/) of seeded random PNGs."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                cv2.imwrite(str(root / split / c / f"{i:04d}.png"),
                            rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return root
