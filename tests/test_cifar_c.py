"""corruptions.py --cifar-c: the published CIFAR-10-C file format, written here from a generated
official-format CIFAR-10 archive (the real files cannot be downloaded offline). Rows follow the
severity blocks and the run's test indices; files that do not fit the run are refused in one sentence."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import common
import compare
import corruptions
import evaluate
import train
from corrupt import CIFAR_C_STANDARD, corrupt
from make_cifar_archive import write_archive

ROOT = Path(__file__).resolve().parents[1]
N_TEST = 300  # the archive's whole test set; the run tests on a subset of 200


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A SimpleCNN trained 2 epochs on a generated CIFAR-10 archive, tested on 200 of its 300 test
    images, evaluated; and the archive's test images as (300, 32, 32, 3) and labels."""
    root = tmp_path_factory.mktemp("cifar_c")
    _, _, test_x, test_y = write_archive(root / "c10.tar.gz", "cifar10", 1000, N_TEST, pixels="shapes")
    train.main(["--arch", "simplecnn", "--dataset", str(root / "c10.tar.gz"), "--optimizer", "adam",
                "--milestones", "--epochs", "2", "--batch-size", "64", "--limit-test", "200",
                "--runs-dir", str(root), "--data-dir", str(root / "data"), "--name", "c10", "--device", "cpu"])
    evaluate.main(["--run", str(root / "c10"), "--device", "cpu"])
    return root / "c10", test_x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(test_y)


def write_c(folder, labels, **files):
    """A CIFAR-C folder: labels.npy (the test labels 5 times) and name.npy = (5, N, H, W, 3) blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    for name, blocks in files.items():
        np.save(folder / f"{name}.npy", np.asarray(blocks).reshape(-1, *np.asarray(blocks).shape[2:]))
    return folder


def grid(run, folder, *flags):
    return corruptions.main(["--run", str(run), "--cifar-c", str(folder), "--device", "cpu", *flags])


def test_identity_file_gives_the_clean_accuracy(setup, tmp_path, capsys, monkeypatch):
    run, x, y = setup
    folder = write_c(tmp_path / "c", y, brightness=np.stack([x] * 5))
    loads, real_load = [], np.load
    # The CIFAR-C files only: predictions.npz (the clean column, read whole) is not one of them.
    monkeypatch.setattr(np, "load", lambda *a, **k: (str(a[0]).endswith(".npy") and loads.append(
        k.get("mmap_mode"))) or real_load(*a, **k))
    result = grid(run, folder)
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["clean_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6) and result["n"] == 200
    assert result["accuracy"] == {"brightness": [result["clean_accuracy"]] * 5}
    assert loads and set(loads) == {"r"}  # every file memory-mapped
    saved = json.loads((run / "corruptions.json").read_text())
    assert saved["source"] == "cifar-c" and saved["seed"] is None
    assert saved["cifar_c"] == {"dir": str(folder.resolve()), "files": ["labels.npy", "brightness.npy"],
                                "missing_standard": [n for n in CIFAR_C_STANDARD if n != "brightness"]}
    assert saved["benchmark_corruptions"] == ["brightness"] and saved["extra_corruptions"] == []
    assert saved["mean_corruption_error_benchmark"] == saved["mean_corruption_error"]
    assert "lacks 14 of the 15 standard corruptions (gaussian_noise, " in capsys.readouterr().out


def test_rows_follow_the_severity_blocks_and_the_test_indices(setup, tmp_path, monkeypatch):
    """The images the model sees: at severity s, the rows (s - 1) * 300 + the official test index of
    each image the run (and --limit-test) keeps; told apart by random pixels, whatever the model."""
    run, x, y = setup
    blocks = np.random.default_rng(0).integers(0, 256, (5, *x.shape), dtype=np.uint8)
    folder = write_c(tmp_path / "c", y, fog=blocks)
    seen, real_predict = [], corruptions.predict
    monkeypatch.setattr(corruptions, "predict",
                        lambda m, x, *a, **k: seen.append(x.clone()) or real_predict(m, x, *a, **k))
    part = grid(run, folder, "--severities", "4", "2", "--limit-test", "80")
    official = np.load(run / "predictions.npz")["indices"][common.subset_indices(200, 80).numpy()]
    # Severities 2 and 4 only: the clean column is read from predictions.npz, not predicted again.
    assert part["severities"] == [2, 4] and part["n"] == 80 and len(seen) == 2
    for s, images in zip((2, 4), seen):
        assert torch.equal(images, torch.from_numpy(blocks[s - 1, official]).permute(0, 3, 1, 2))


def test_same_images_as_generated_and_a_subset_of_files(setup, tmp_path, capsys):
    run, x, y = setup
    hwc = torch.from_numpy(x).permute(0, 3, 1, 2)
    made = {n: np.stack([corrupt(hwc, n, s).permute(0, 2, 3, 1).numpy() for s in range(1, 6)])
            for n in ("contrast", "saturate")}
    folder = write_c(tmp_path / "c", y, **made)
    np.save(folder / "notes.npy", np.zeros(3))
    flags = ["--limit-test", "120", "--severities", "1", "3", "5"]
    read = grid(run, folder, *flags)
    assert "ignoring notes.npy, not named after a CIFAR-10-C corruption" in capsys.readouterr().out
    made_here = corruptions.main(["--run", str(run), "--device", "cpu", "--corruptions", "contrast", "saturate",
                                  *flags])
    assert read["corruptions"] == ["contrast", "saturate"] and read["accuracy"] == made_here["accuracy"]
    assert made_here["source"] == "generated" and made_here["cifar_c"] is None
    assert read["extra_corruptions"] == ["saturate"] and read["benchmark_corruptions"] == ["contrast"]
    saturate = read["accuracy"]["saturate"]
    assert read["mean_corruption_error_extra"] == pytest.approx(1 - np.mean(saturate), abs=1e-6)
    assert grid(run, folder, "--corruptions", "saturate", *flags)["corruptions"] == ["saturate"]


def refused(run, argv, message):
    """corruptions.main(argv) stops with one line holding message, and corruptions.json is untouched."""
    path = run / "corruptions.json"
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(SystemExit) as exc:
        corruptions.main(["--run", str(run), "--device", "cpu", *argv])
    text = str(exc.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text, text
    assert (path.read_bytes() if path.exists() else None) == before


def test_labels_that_do_not_match_are_refused(setup, tmp_path):
    run, x, y = setup
    idx = np.load(run / "predictions.npz")["indices"]
    wrong = y.copy()
    wrong[idx[7]] = (wrong[idx[7]] + 1) % 10
    folder = write_c(tmp_path / "c", wrong, brightness=np.stack([x] * 5))
    refused(run, ["--cifar-c", str(folder)], f"labels.npy does not match the test labels of the run's "
            f"{run.parent / 'c10.tar.gz'}: 5 of 1,000 differ, the first at severity 1, test image {idx[7]} "
            f"({wrong[idx[7]]} in the file, {y[idx[7]]} in the run)")
    # An image the run does not test on may carry any label: the run's rows are what is checked.
    other = int(np.setdiff1d(np.arange(N_TEST), idx)[0])
    ok = y.copy()
    ok[other] = (ok[other] + 1) % 10
    assert grid(run, write_c(tmp_path / "ok", ok, brightness=np.stack([x] * 5)), "--limit-test", "20")
    # The published files (5 x 10,000 rows) against a smaller test set:
    np.save(folder / "labels.npy", np.zeros(50000, np.uint8))
    refused(run, ["--cifar-c", str(folder)], "labels.npy holds uint8 (50000,), but the run's test set of "
            "300 images needs 5 x 300 = 1,500 integer labels")


def test_refusal_is_one_line_with_exit_status_1(setup, tmp_path):
    run, x, y = setup
    folder = write_c(tmp_path / "c", (y + 1) % 10, brightness=np.stack([x] * 5))
    done = subprocess.run([sys.executable, "corruptions.py", "--run", str(run), "--cifar-c", str(folder),
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "labels.npy does not match" in done.stderr


@pytest.mark.parametrize("bad, message", [
    (lambda x: np.stack([x] * 5).astype(np.float32),
     "holds float32 (1500, 32, 32, 3); expected uint8 (1500, 32, 32, 3)"),
    (lambda x: np.stack([x] * 5).transpose(0, 1, 4, 2, 3), "holds uint8 (1500, 3, 32, 32); expected uint8"),
    (lambda x: np.stack([x] * 4), "holds uint8 (1200, 32, 32, 3); expected"),
])
def test_wrong_dtype_or_shape_is_refused(setup, tmp_path, bad, message):
    run, x, y = setup
    folder = write_c(tmp_path / "c", y, contrast=bad(x))
    refused(run, ["--cifar-c", str(folder)], f"{folder / 'contrast.npy'} {message}")


def test_unreadable_files_and_folders_are_refused(setup, tmp_path):
    run, x, y = setup
    folder = write_c(tmp_path / "c", y, contrast=np.stack([x] * 5))
    refused(run, ["--cifar-c", str(tmp_path / "nothing")],
            "is not a folder; give the folder that holds labels.npy")
    refused(run, ["--cifar-c", str(folder), "--corruptions", "frost"],
            "has no frost.npy; choose 'all' or any of contrast")
    refused(run, ["--cifar-c", str(folder), "--corruptions", "rain"],
            "has no rain.npy ('rain' is not a CIFAR-10-C")
    data = (folder / "contrast.npy").read_bytes()
    (folder / "contrast.npy").write_bytes(data[:1000])
    refused(run, ["--cifar-c", str(folder)], "contrast.npy cannot be read as a .npy array")
    np.save(folder / "contrast.npy", np.array([{"not": "images"}], dtype=object))
    refused(run, ["--cifar-c", str(folder)], "contrast.npy cannot be read as a .npy array")
    (folder / "contrast.npy").unlink()
    refused(run, ["--cifar-c", str(folder)], "holds no corruption file; expected some of gaussian_noise.npy")
    (folder / "labels.npy").unlink()
    refused(run, ["--cifar-c", str(folder)], "has no labels.npy")


def test_a_run_not_on_the_cifar_archives_is_refused(setup, tiny_run, tmp_path):
    run, x, y = setup
    other = shutil.copytree(tiny_run, tmp_path / "syn")  # trained and evaluated on the synthetic set
    folder = write_c(tmp_path / "c", y, contrast=np.stack([x] * 5))
    refused(other, ["--cifar-c", str(folder)], "--cifar-c needs a run on the cifar10 or cifar100 archive, "
            "whose test order the files follow; this run's dataset is synthetic")


def test_compare_refuses_generated_against_cifar_c():
    grid_ = {"n": 10, "limit_test": None, "seed": None, "severities": [1], "corruptions": ["fog"],
             "accuracy": {"fog": [0.5]}, "clean_accuracy": 0.9}
    with pytest.raises(common.UserError, match=r"differ in source \(generated vs cifar-c\)"):
        compare.compare_grids({**grid_, "source": "generated"}, {**grid_, "source": "cifar-c"})
    # A corruptions.json written before "source" existed counts as generated.
    both = compare.compare_grids(grid_, {**grid_, "source": "generated"})
    assert both["corruptions"] == ["fog"] and both["source"] == "generated"
