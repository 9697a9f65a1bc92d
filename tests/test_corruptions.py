"""corrupt.py and corruptions.py: every corruption keeps shape, dtype and input; determinism; distortion grows with
severity; agreement with NumPy/SciPy/OpenCV/PIL versions of the published functions; bad input; and
the command line on a trained synthetic run."""
import copy
import json
import shutil
from io import BytesIO

import cv2
import numpy as np
import pytest
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom

import common
import corrupt as corrupt_module
import corruptions
import evaluate
import train
from corrupt import CORRUPTIONS, NAMES, corrupt

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur",
          "snow", "fog", "elastic_transform", "spatter"}
# The published constants themselves are not ordered by distortion for these (corrupt.py's docstring):
# glass_blur's blur grows while its pixel moves do not, elastic_transform's affine shift shrinks from
# severity 1 to 5 and its smoothed displacement is under a pixel, saturate goes x0.3, x0.1, x1.5, ...,
# spatter is water at severities 1-3 and mud, a different corruption, at 4 and 5.
NOT_MONOTONE = {"glass_blur", "elastic_transform", "saturate", "spatter"}


@pytest.fixture(scope="module")
def batch():
    """24 synthetic images (shapes on clutter) plus a black and a white one: (26, 3, 32, 32) uint8."""
    x = common.make_synthetic(n_train=1, n_test=24).test_x
    return torch.cat([x, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)])


@pytest.fixture(scope="module")
def distortion(batch):
    """Mean absolute difference from the clean batch, per corruption and severity (same seed)."""
    return {n: [(corrupt(batch, n, s, seed=3).float() - batch.float()).abs().mean().item() for s in range(1, 6)]
            for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("severity", [1, 5])
def test_shape_dtype_and_input_kept(batch, name, severity):
    before = batch.clone()
    out = corrupt(batch, name, severity, seed=0)
    assert out.shape == batch.shape and out.dtype == torch.uint8 and out.device == batch.device
    assert torch.equal(batch, before)  # the input is not modified
    changed = (out != batch).float().mean().item()
    assert changed > 0.005, changed  # it changes the image (impulse noise at severity 1: 1% of values)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(batch, name):
    a = corrupt(batch, name, 3, seed=7)
    assert torch.equal(a, corrupt(batch, name, 3, seed=7))
    assert torch.equal(a, corrupt(batch, name, 3, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(a, corrupt(batch, name, 3, seed=8)) == (name not in RANDOM)


@pytest.mark.parametrize("name", sorted(set(NAMES) - NOT_MONOTONE))
def test_distortion_grows_with_severity(distortion, name):
    d = distortion[name]
    assert all(b >= a - 0.01 for a, b in zip(d, d[1:])), d  # motion_blur 3 and 4 differ only in far taps
    assert d[4] > d[0] + 1, d


@pytest.mark.parametrize("name", sorted(NOT_MONOTONE))
def test_every_severity_distorts(distortion, name):
    assert min(distortion[name]) > 1, distortion[name]


#### The published functions written with NumPy, SciPy, OpenCV and PIL, for the deterministic ones

def _defocus(x, c):  # x (H, W, 3) float in [0, 1]
    r = np.arange(-8, 9)
    disk = ((r[:, None] ** 2 + r[None] ** 2) <= c[0] ** 2).astype(np.float32)
    k = cv2.GaussianBlur(disk / disk.sum(), (3, 3), c[1])
    return np.stack([cv2.filter2D(x[..., d].astype(np.float32), -1, k) for d in range(3)], -1)


def _zoom_blur(x, stop):
    out = x.copy()
    for z in np.arange(1, stop, 0.01):
        ch = int(np.ceil(32 / z))
        top = (32 - ch) // 2
        y = zoom(x[top:top + ch, top:top + ch], (z, z, 1), order=1)
        t = (y.shape[0] - 32) // 2
        out += y[t:t + 32, t:t + 32]
    return out / (len(np.arange(1, stop, 0.01)) + 1)


def _hsv(x, channel, fn):
    h = rgb_to_hsv(x)
    h[..., channel] = np.clip(fn(h[..., channel]), 0, 1)
    return hsv_to_rgb(h)


def _pil(x, fn):
    return np.asarray(fn(Image.fromarray(np.uint8(np.round(x * 255))))) / 255


def _jpeg(im, q):
    buf = BytesIO()
    im.save(buf, "JPEG", quality=q)
    return Image.open(buf)


REFERENCE = {
    "defocus_blur": _defocus,
    "gaussian_blur": lambda x, c: gaussian_filter(x, (c, c, 0), mode="nearest", truncate=4.0),
    "zoom_blur": _zoom_blur,
    "contrast": lambda x, c: (x - x.mean((0, 1))) * c + x.mean((0, 1)),
    "brightness": lambda x, c: _hsv(x, 2, lambda v: v + c),
    "saturate": lambda x, c: _hsv(x, 1, lambda s: s * c[0] + c[1]),
    "pixelate": lambda x, c: _pil(x, lambda im: im.resize((int(32 * c),) * 2, Image.BOX).resize((32, 32), Image.BOX)),
    "jpeg_compression": lambda x, c: _pil(x, lambda im: _jpeg(im, c)),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_matches_the_published_function(batch, name):
    """Compared before the final rounding to uint8: brightness and saturate land on exact halves
    (v + 0.3 is v + 76.5 levels), which float noise would round either way."""
    fn, constants = CORRUPTIONS[name]
    x = batch[:8].float() / 255
    for s in (1, 3, 5):
        ours = fn(x, constants[s - 1], None).clamp(0, 1).permute(0, 2, 3, 1).double().numpy()
        ref = np.stack([np.clip(REFERENCE[name](im, constants[s - 1]), 0, 1)
                        for im in x.permute(0, 2, 3, 1).double().numpy()])
        assert np.abs(ours - ref).max() * 255 < 0.01, (name, s)


def _published_spatter(x, noise, c):
    """The published spatter of one image (H, W, 3) given its normal draws `noise` (H, W)."""
    liquid = gaussian_filter(noise, c[2], mode="nearest", truncate=4.0)
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        # astype(np.uint8) as published; written out, since a level above 255 wraps on x86 only.
        liquid = (np.floor(liquid * 255) % 256).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        m = liquid * cv2.blur(dist, (3, 3)).astype(np.float32)
        return x + (m / m.max() * c[4])[..., None] * np.array([175, 238, 238]) / 255
    m = gaussian_filter((liquid > c[3]).astype(np.float32), c[4], mode="nearest", truncate=4.0)
    m[m < 0.8] = 0
    return x * (1 - m[..., None]) + np.array([63, 42, 20]) / 255 * m[..., None]


def test_spatter_matches_the_published_function_for_the_same_draws():
    x = common.make_synthetic(n_train=1, n_test=64).test_x.double() / 255
    g = torch.Generator().manual_seed(0)
    for c in CORRUPTIONS["spatter"][1]:
        noise = c[0] + c[1] * torch.randn(len(x), 1, 32, 32, generator=g, dtype=torch.float64)
        ours = corrupt_module._spatter(x, noise, c).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        ref = np.stack([np.clip(_published_spatter(im, nz[0], c), 0, 1)
                        for im, nz in zip(x.permute(0, 2, 3, 1).numpy(), noise.numpy())])
        assert np.abs(ours - ref).max() * 255 < 0.01, c
        assert np.abs(ours - x.permute(0, 2, 3, 1).numpy()).max() > 0.1, c  # it did spatter
    # A layer without drops leaves the image as it is (the published code would divide 0 by 0).
    water = CORRUPTIONS["spatter"][1][0]
    assert torch.equal(corrupt_module._spatter(x, torch.zeros(len(x), 1, 32, 32, dtype=x.dtype), water), x)


#### Bad input

@pytest.mark.parametrize("name, severity, message", [
    ("frost", 1, "unknown corruption 'frost'; choose 'all' or any of gaussian_noise, "),
    ("fog", 0, "severity 0 is outside 1-5"), ("fog", 6, "severity 6 is outside 1-5")])
def test_bad_choice_is_a_user_error(batch, name, severity, message):
    with pytest.raises(common.UserError, match=message):
        corrupt(batch, name, severity)


def test_float_images_are_refused(batch):
    with pytest.raises(ValueError, match="takes uint8 images"):
        corrupt(batch.float() / 255, "fog", 1)


#### The command line on a trained synthetic run

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A SimpleCNN trained 1 epoch on 256 synthetic images, evaluated on 120."""
    root = tmp_path_factory.mktemp("corr")
    synthetic = common.make_synthetic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "make_synthetic", lambda: copy.copy(synthetic))
        train.main(["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam", "--milestones",
                    "--epochs", "1", "--batch-size", "64", "--limit-train", "256", "--limit-test", "120",
                    "--runs-dir", str(root), "--device", "cpu", "--name", "syn"])
        evaluate.main(["--run", str(root / "syn"), "--device", "cpu"])
        yield root / "syn"


def test_evaluate_writes_calibration(run):
    metrics = json.loads((run / "metrics.json").read_text())
    pred = np.load(run / "predictions.npz")
    cal = evaluate.calibration(pred["probs"], pred["labels"])
    assert {k: metrics[k] for k in ("nll", "brier", "ece")} == pytest.approx({k: cal[k] for k in ("nll", "brier", "ece")})
    assert metrics["nll"] == pytest.approx(metrics["mean_loss"], rel=1e-4)  # softmax probs vs logits
    assert sum(metrics["reliability"]["count"]) == 120


def test_cli_grid_on_a_subset(run):
    result = corruptions.main(["--run", str(run), "--limit-test", "40", "--severities", "5", "1",
                               "--device", "cpu"])
    saved = json.loads((run / "corruptions.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["n"] == 40 and saved["severities"] == [1, 5] and saved["corruptions"] == list(NAMES)
    assert saved["checkpoint"] == "last" and saved["epoch"] == 1 and saved["limit_test"] == 40
    pred = np.load(run / "predictions.npz")
    rows = common.subset_indices(120, 40).numpy()
    # Counted from predictions.npz on the same rows, not recomputed: exactly equal.
    correct = pred["probs"].argmax(1) == pred["labels"]
    assert saved["clean_accuracy"] == round(float(correct[rows].mean()), 6)
    cells = [a for n in NAMES for a in saved["accuracy"][n]]
    assert len(cells) == 2 * len(NAMES) and all(0 <= a <= 1 for a in cells)
    assert saved["mean_corruption_error"] == pytest.approx(np.mean([1 - a for a in cells]), abs=1e-6)
    assert saved["benchmark_corruptions"] == list(NAMES[:14])
    for key in ("seconds", "images_per_second", "device", "git_commit", "seconds_by_corruption"):
        assert saved[key], key
    # Each cell has its own seed, so a smaller grid draws the same noise and gets the same accuracy.
    part = corruptions.main(["--run", str(run), "--limit-test", "40", "--severities", "5",
                             "--corruptions", "fog", "gaussian_noise", "--device", "cpu"])
    assert part["accuracy"] == {"fog": [saved["accuracy"]["fog"][1]],
                                "gaussian_noise": [saved["accuracy"]["gaussian_noise"][1]]}


def test_cli_full_test_set_matches_metrics(run):
    result = corruptions.main(["--run", str(run), "--corruptions", "contrast", "--severities", "1",
                               "--device", "cpu"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["n"] == 120 and result["clean_accuracy"] == round(metrics["test_accuracy"], 6)


def copy_run(run, dest, **arrays):
    """A copy of the run folder without its corruptions.json, predictions.npz's arrays replaced by
    those given (the others kept)."""
    shutil.copytree(run, dest)
    (dest / "corruptions.json").unlink(missing_ok=True)
    with np.load(run / "predictions.npz") as f:
        saved = {k: f[k] for k in f.files}
    np.savez_compressed(dest / "predictions.npz", **{**saved, **arrays})
    return dest


@pytest.fixture
def doctored(run, tmp_path):
    """A copy of the run whose predictions.npz and metrics.json claim other predictions than its model
    makes: every even row right, every odd row wrong (accuracy 0.5). A clean accuracy recomputed
    with the model misses them; one read from evaluate.py's file finds them. Returns (copy, the
    claimed hits, the model's own hits)."""
    with np.load(run / "predictions.npz") as f:
        labels, probs = f["labels"], f["probs"]
    claimed = np.where(np.arange(len(labels)) % 2 == 0, labels, (labels + 1) % probs.shape[1])
    copy = copy_run(run, tmp_path / "syn", probs=np.eye(probs.shape[1], dtype=np.float32)[claimed])
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["test_accuracy"] = float((claimed == labels).mean())
    (copy / "metrics.json").write_text(json.dumps(metrics))
    return copy, claimed == labels, probs.argmax(1) == labels


@pytest.mark.parametrize("limit", [None, 40])
def test_cli_clean_accuracy_is_read_from_predictions(doctored, limit, monkeypatch, capsys):
    run, claimed, own = doctored
    images = []

    def predict(model, x, *args, **kwargs):
        images.append(len(x))
        return common.predict(model, x, *args, **kwargs)
    monkeypatch.setattr(corruptions, "predict", predict)
    result = corruptions.main(["--run", str(run), "--corruptions", "contrast", "--severities", "1",
                               "--device", "cpu"] + ([] if limit is None else ["--limit-test", str(limit)]))
    rows = common.subset_indices(120, limit)
    rows = slice(None) if rows is None else rows.numpy()
    assert claimed[rows].mean() != own[rows].mean()  # else the test could not tell reading from recomputing
    assert result["n"] == (limit or 120) and result["clean_accuracy"] == round(float(claimed[rows].mean()), 6)
    if limit is None:
        metrics = json.loads((run / "metrics.json").read_text())
        assert result["clean_accuracy"] == metrics["test_accuracy"] == 0.5
    assert images == [result["n"]]  # one forward pass, the contrast cell's: none over the clean images
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize("change", ["labels", "fewer rows", "indices"])
def test_cli_predictions_of_another_test_set(run, tmp_path, change):
    with np.load(run / "predictions.npz") as f:
        saved = {k: f[k] for k in f.files}
    if change == "labels":  # one label off: evaluated on another dataset's copy
        labels = saved["labels"].copy()
        labels[7] = (labels[7] + 1) % saved["probs"].shape[1]
        arrays = {"labels": labels}
    elif change == "fewer rows":  # evaluated under another --limit-test
        arrays = {k: v[:100] for k, v in saved.items()}
    else:  # the same labels but other test images
        arrays = {"indices": saved["indices"] + 1}
    copy = copy_run(run, tmp_path / "syn", **arrays)
    with pytest.raises(SystemExit) as exc:
        corruptions.main(["--run", str(copy), "--corruptions", "contrast", "--severities", "1",
                          "--device", "cpu", "--limit-test", "40"])
    message = exc.value.code
    assert message.startswith(f"error: {copy / 'predictions.npz'} does not match the run's test set (")
    assert message.endswith(f"; re-run python evaluate.py --run {copy}") and "\n" not in message
    assert not (copy / "corruptions.json").exists()


@pytest.mark.skipif(not common.cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_cli_amp_keeps_the_clean_accuracy_exact(run):
    """--amp: corrupted cells under bf16 autocast, the clean column evaluate.py's float32 predictions."""
    flags = ["--run", str(run), "--corruptions", "contrast", "fog", "--severities", "1", "5",
             "--device", "cpu"]
    fp32, bf16 = corruptions.main(flags), corruptions.main(flags + ["--amp"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert bf16["precision"] == "bf16 autocast" and fp32["precision"] == "float32"
    assert bf16["clean_accuracy"] == fp32["clean_accuracy"] == round(metrics["test_accuracy"], 6)
    for name in ("contrast", "fog"):  # 120 images: a flipped prediction moves a cell by 0.0083
        assert bf16["accuracy"][name] == pytest.approx(fp32["accuracy"][name], abs=0.05)


@pytest.mark.parametrize("flags, message", [
    (["--corruptions", "fog", "frost"], "unknown corruption 'frost'; choose 'all' or any of "),
    (["--severities", "0", "3"], "severity 0 is outside 1-5"),
    (["--severities", "6"], "severity 6 is outside 1-5")])
def test_cli_bad_choice(tmp_path, flags, message):
    with pytest.raises(SystemExit) as exc:
        corruptions.main(["--run", str(tmp_path), *flags])
    assert exc.value.code.startswith("error: ") and message in exc.value.code and "\n" not in exc.value.code
    assert not (tmp_path / "corruptions.json").exists()


def test_cli_needs_an_evaluated_run(tmp_path):
    with pytest.raises(SystemExit, match=f"run python evaluate.py --run {tmp_path} first"):
        corruptions.main(["--run", str(tmp_path)])


def test_cli_bad_numbers(tmp_path, capsys):
    for flag in ("--limit-test", "--batch-size"):
        with pytest.raises(SystemExit) as exc:
            corruptions.main(["--run", str(tmp_path), flag, "0"])
        assert exc.value.code == 2 and f"argument {flag}: must be at least 1" in capsys.readouterr().err
