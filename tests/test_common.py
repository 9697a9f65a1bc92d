"""Networks, CutMix and the device-resident loader of common.py."""
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from common import (DEFAULT_CAM_LAYER, DeviceLoader, UserError, build_model, channel_stats, crop_flip,
                    cutmix, normalize, seed_everything)


@pytest.mark.parametrize("arch", ["resnet18", "simplecnn"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_model_output_shape(arch, num_classes):
    model = build_model(arch, num_classes).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)


def test_resnet18_is_adapted_to_32x32():
    model = build_model("resnet18", 100)
    c = model.conv1
    assert (c.kernel_size, c.stride, c.padding, c.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 100
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert seen["shape"] == (1, 512, 4, 4)  # layer4 is 4x4 on 32x32 input (FACTS.md)


def test_unknown_arch_is_a_user_error():
    with pytest.raises(UserError, match="unknown architecture"):
        build_model("vgg11", 10)


def test_resnet18_checkpoint_loads_into_torchvision(tmp_path):
    ours = build_model("resnet18", 100).eval()
    torch.save(ours.state_dict(), tmp_path / "w.pt")
    theirs = torchvision.models.resnet18(num_classes=100)
    theirs.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    theirs.maxpool = nn.Identity()
    theirs.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))  # strict
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs.eval()(x))


@pytest.mark.parametrize("arch", ["resnet34", "resnet50", "wide_resnet50_2"])
def test_other_resnets_load_into_torchvision_train_a_step_and_explain_at_layer4(arch, tmp_path):
    from gradcam import grad_cam
    torch.manual_seed(0)
    ours = build_model(arch, 10)
    torch.save(ours.state_dict(), tmp_path / "w.pt")
    theirs = getattr(torchvision.models, arch)(num_classes=10)
    theirs.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    theirs.maxpool = nn.Identity()
    theirs.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))  # strict
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))
    ours.train()
    opt = torch.optim.SGD(ours.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(ours(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert DEFAULT_CAM_LAYER[arch] == "layer4"
    maps = grad_cam(ours, ours.layer4, x)
    assert maps.shape == (4, 32, 32) and maps.amax() <= 1


def test_seed_everything_repeats_draws():
    seed_everything(3)
    a = torch.rand(5)
    seed_everything(3)
    assert torch.equal(a, torch.rand(5))


#### CutMix

def _batch(b=8, h=32, w=32):
    images = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 3, h, w).clone()
    return images, torch.arange(b) * 10  # pixel value i identifies image i, label 10 i


@pytest.mark.parametrize("seed", range(20))
def test_cutmix_box_pairing_and_lambda(seed):
    images, labels = _batch()
    before = images.clone()
    mixed, y_a, y_b, lam = cutmix(images, labels, 1.0, torch.Generator().manual_seed(seed))
    assert torch.equal(images, before)  # inputs are left unchanged
    assert isinstance(lam, float) and 0.0 <= lam <= 1.0
    assert torch.equal(y_a, labels)
    # One box for the whole batch: the pixels that changed form the same rectangle in every image
    # whose partner differs, and carry that partner's pixels.
    src = mixed / 1.0  # image index of each pixel's source
    partner = (y_b // 10)
    inside = src[:, 0] == partner[:, None, None].float()
    outside = src[:, 0] == torch.arange(8)[:, None, None].float()
    assert (inside | outside).all()
    boxes = [inside[i] for i in range(8) if partner[i] != i]
    if boxes:
        box = boxes[0]
        assert all(torch.equal(b, box) for b in boxes)
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        if len(rows):
            area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert box.sum() == area  # a rectangle
            assert lam == pytest.approx(1 - area.item() / (32 * 32))
        else:
            assert lam == pytest.approx(1.0)
    assert sorted(partner.tolist()) == list(range(8))  # one permutation


def test_cutmix_is_reproducible_with_a_generator():
    images, labels = torch.rand(16, 3, 32, 32), torch.arange(16)
    a = cutmix(images, labels, 1.0, torch.Generator().manual_seed(7))
    b = cutmix(images, labels, 1.0, torch.Generator().manual_seed(7))
    c = cutmix(images, labels, 1.0, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and a[3] == b[3]
    assert not (torch.equal(a[0], c[0]) and a[3] == c[3])


@pytest.mark.parametrize("alpha", [1.0, 0.2])
def test_cutmix_lambda_follows_the_authors_distribution(alpha):
    images, labels = torch.rand(4, 3, 32, 32), torch.arange(4)
    g = torch.Generator().manual_seed(0)
    lams = np.array([cutmix(images, labels, alpha, g)[3] for _ in range(2000)])
    # Independent simulation of the recipe: lam ~ Beta(alpha, alpha), box side sqrt(1 - lam) * 32
    # centred uniformly, clipped; clipping shrinks boxes, so the recomputed lam exceeds the drawn one.
    rng = np.random.default_rng(1)
    lam0 = rng.beta(alpha, alpha, 20000)
    cut = (32 * np.sqrt(1 - lam0)).astype(int)
    c = rng.integers(0, 32, (2, 20000))
    side = [np.clip(c[i] + cut // 2, 0, 32) - np.clip(c[i] - cut // 2, 0, 32) for i in (0, 1)]
    expected = 1 - side[0] * side[1] / 1024
    assert abs(lams.mean() - expected.mean()) < 0.02
    for q in (0.1, 0.5, 0.9):
        assert abs(np.quantile(lams, q) - np.quantile(expected, q)) < 0.05


class _FixedBeta:
    """Stands in for both Beta samplers: NumPy's Generator.beta and torch's Beta.sample."""
    def __init__(self, lam):
        self.lam = lam

    def beta(self, a, b):
        return self.lam

    def sample(self, shape=()):
        return torch.tensor([self.lam], dtype=torch.float64)


def _fix_draws(monkeypatch, lam, cy, cx, h, w):
    """Both CutMixes draw lam and the centre (cy, cx), and pair image i with image i - 1 (the
    roll torchvision always uses). h != w, so a randint's upper bound says which coordinate it is."""
    def randint(*args, **kwargs):
        high = [a for a in args if isinstance(a, int)][-1]
        return torch.tensor([{h: cy, w: cx}.get(high, 0)])  # anything else: cutmix's seed draw
    monkeypatch.setattr(torch, "randint", randint)
    monkeypatch.setattr(torch, "randperm", lambda n, **kwargs: torch.arange(n).roll(1))
    monkeypatch.setattr(np.random, "default_rng", lambda seed=None: _FixedBeta(lam))


@pytest.mark.parametrize("lam, cy, cx", [(0.5, 12, 20), (0.3, 0, 0), (0.75, 23, 39),
                                         (0.62, 3, 37), (0.9, 20, 2), (0.999, 5, 5),
                                         (0.0, 12, 20), (0.0, 1, 38)])
def test_cutmix_box_and_lambda_match_torchvision_for_the_same_draws(monkeypatch, lam, cy, cx):
    from torchvision.transforms.v2 import CutMix
    b, h, w, classes = 6, 24, 40, 7
    images, labels = _batch(b, h, w)
    labels = labels // 10
    _fix_draws(monkeypatch, lam, cy, cx, h, w)
    tv = CutMix(alpha=1.0, num_classes=classes)
    tv._dist = _FixedBeta(lam)  # private, but the only place its lambda comes from
    x1, y1, x2, y2 = tv.make_params([images])["box"]
    tv_mixed, tv_soft = tv(images, labels)
    mixed, y_a, y_b, ours_lam = cutmix(images, labels, 1.0, torch.Generator())
    # torchvision halves int(r * H) with r = sqrt(1 - lam) / 2; we take int(H sqrt(1 - lam)) // 2.
    # floor(floor(x) / 2) == floor(x / 2), and both clip to the image: the same box.
    assert torch.equal(mixed, tv_mixed)
    region = torch.zeros(h, w, dtype=torch.bool)
    region[y1:y2, x1:x2] = True
    changed = mixed[:, 0] != images[:, 0]  # pixel value i marks image i, so all of the box moves
    assert torch.equal(changed, region.expand(b, h, w))
    assert ours_lam == 1.0 - (x2 - x1) * (y2 - y1) / (h * w)
    # Their soft one-hot targets are our two hard labels weighted by lam; cross-entropy is linear
    # in the target, so the two losses are the same.
    assert torch.equal(y_b, labels.roll(1))
    ours_soft = ours_lam * F.one_hot(y_a, classes) + (1 - ours_lam) * F.one_hot(y_b, classes)
    assert torch.allclose(tv_soft, ours_soft.float(), atol=1e-6)
    logits = torch.randn(b, classes, generator=torch.Generator().manual_seed(0))
    ours_loss = (ours_lam * F.cross_entropy(logits, y_a)
                 + (1 - ours_lam) * F.cross_entropy(logits, y_b))
    assert F.cross_entropy(logits, tv_soft) == pytest.approx(ours_loss.item(), rel=1e-5)


def test_cutmix_pairs_by_permutation_where_torchvision_rolls():
    from torchvision.transforms.v2 import CutMix
    images, labels = _batch()
    torch.manual_seed(0)
    for _ in range(5):
        mixed, soft = CutMix(alpha=1.0, num_classes=80)(images, labels)
        for i in range(8):  # pixel value j marks image j: only i and i - 1 appear in image i
            assert set(mixed[i, 0].unique().tolist()) <= {i, (i - 1) % 8}
    g = torch.Generator().manual_seed(0)
    partners = [cutmix(images, labels, 1.0, g)[2] // 10 for _ in range(5)]
    assert any(not torch.equal(p, torch.arange(8).roll(1)) for p in partners)


#### Loader and augmentation

def test_crop_flip_matches_a_per_image_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    offsets = torch.randint(0, 9, (6, 2), generator=g)
    flips = torch.tensor([True, False, True, False, True, False])
    out = crop_flip(x, offsets, flips)
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(6):
        dy, dx = offsets[i].tolist()
        ref = padded[i, :, dy:dy + 32, dx:dx + 32]
        assert torch.equal(out[i], ref.flip(2) if flips[i] else ref)


def test_loader_covers_each_image_once_and_is_seeded():
    images = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 3, 32, 32).clone()
    labels = torch.arange(10)

    def epoch(seed):
        loader = DeviceLoader(images, labels, 4, [0, 0, 0], [1 / 255] * 3, "cpu", train=True,
                              augment="none", generator=torch.Generator().manual_seed(seed))
        batches = list(loader)
        assert [len(y) for _, y in batches] == [4, 4, 2] and len(loader) == 3
        return torch.cat([y for _, y in batches]), torch.cat([x for x, _ in batches])

    order, x = epoch(1)
    assert sorted(order.tolist()) == list(range(10))
    assert torch.equal(x[:, 0, 0, 0], order.float())  # mean 0, std 1/255: raw pixel values
    assert torch.equal(order, epoch(1)[0])
    assert not torch.equal(order, epoch(2)[0])


def test_normalize_and_channel_stats():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(x)
    z = normalize(x, mean, std)
    assert z.dtype == torch.float32 and z.shape == x.shape
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_cpu_device_flushes_denormals():
    from common import resolve_device
    try:
        assert resolve_device("cpu").type == "cpu"
        tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal float32
        assert (tiny * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("name, device", [("cpu", "cpu"), ("auto", None)])
def test_device_strings_resolve(name, device):
    from common import resolve_device
    try:
        expected = device or ("cuda" if torch.cuda.is_available() else
                              "mps" if torch.backends.mps.is_available() else "cpu")
        assert resolve_device(name).type == expected
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("name, message", [
    ("bogus", "--device 'bogus' is not a torch device; use auto"),
    ("cuda:99", "--device cuda:99 was asked for but this machine has no such device"),
    ("mps" if not torch.backends.mps.is_available() else "cuda:99", "was asked for but this machine has no such device")])
def test_unavailable_or_unknown_device_is_a_user_error(name, message):
    from common import UserError, resolve_device
    with pytest.raises(UserError, match=re.escape(message)):
        resolve_device(name)


def test_every_script_takes_any_device_string():
    """No script limits --device to a fixed list ("cuda" and "cpu"): cuda:1 and mps parse."""
    import importlib
    for script in ("train", "evaluate", "gradcam", "faithfulness", "corruptions", "compare", "bench",
                   "bench_gradcam", "amp_check"):
        parser = importlib.import_module(script).build_parser()
        for action in (a for a in parser._actions if "--device" in a.option_strings):
            assert action.choices is None and action.default == "auto", script


SCRIPTS = ("train", "evaluate", "failures", "gradcam", "faithfulness", "corruptions", "compare",
           "report", "supplement", "bench", "bench_gradcam", "amp_check", "reference_run")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_a_help_line_and_its_default_shows(script, capsys):
    import importlib
    parser = importlib.import_module(script).build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert all(a.help for a in flags), [a.option_strings for a in flags if not a.help]
    text = " ".join(parser.format_help().split())  # help lines wrap anywhere
    for a in flags:
        if a.default not in (None, False) and not a.required:
            assert f"(default: {a.default})" in text, a.option_strings


#### Argument types: bounds refused by the parser, in one wording

def test_at_least_accepts_its_bound_and_above():
    from common import at_least
    assert at_least(1)("1") == 1 and at_least(1)("50") == 50 and at_least(0)("0") == 0
    assert at_least(2)("2") == 2 and isinstance(at_least(1)("3"), int)


@pytest.mark.parametrize("n, text", [(1, "0"), (1, "-3"), (0, "-1"), (2, "1")])
def test_at_least_refuses_below(n, text):
    import argparse
    from common import at_least
    with pytest.raises(argparse.ArgumentTypeError, match=f"^must be at least {n}$"):
        at_least(n)(text)


@pytest.mark.parametrize("text", ["x", "1.5", "", "nan"])
def test_at_least_refuses_non_integers_as_int_does(text):
    from common import at_least
    with pytest.raises(ValueError):
        at_least(1)(text)


@pytest.mark.parametrize("kwargs, good, bad, message", [
    (dict(lo=0, hi=1), ["0", "0.5", "1"], ["-0.1", "1.5"], "must be in [0, 1]"),
    (dict(lo=0, hi=1, hi_open=True), ["0", "0.999"], ["1", "-1e-9"], "must be in [0, 1)"),
    (dict(lo=0, hi=1, lo_open=True), ["1e-9", "1"], ["0", "2"], "must be in (0, 1]"),
    (dict(lo=0, lo_open=True), ["1e-9", "0.1", "1e30"], ["0", "-0.0", "-1"], "must be greater than 0"),
    (dict(lo=0), ["0", "5e-4"], ["-1e-9", "-2"], "must be at least 0"),
])
def test_float_in_bounds_and_messages(kwargs, good, bad, message):
    import argparse
    from common import float_in
    parse = float_in(**kwargs)
    assert [parse(t) for t in good] == [float(t) for t in good]
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}$"):
            parse(text)
    for text in ("nan", "inf", "-inf", "1e400"):
        with pytest.raises(argparse.ArgumentTypeError, match="^must be a finite number$"):
            parse(text)
    with pytest.raises(ValueError):
        parse("x")


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "error: argument --n: must be at least 1"),
    (["--n", "two"], "error: argument --n: invalid int value: 'two'"),
    (["--p", "1.5"], "error: argument --p: must be in [0, 1)"),
    (["--p", "nan"], "error: argument --p: must be a finite number"),
    (["--p", "x"], "error: argument --p: invalid float value: 'x'"),
    (["--m", "3", "0"], "error: argument --m: must be at least 1"),
])
def test_argument_types_are_usage_errors(argv, message, capsys):
    """A bad value exits 2 with argparse's one line naming the flag, no traceback."""
    import argparse
    from common import at_least, float_in
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=at_least(1), default=1)
    p.add_argument("--p", type=float_in(0, 1, hi_open=True), default=0.0)
    p.add_argument("--m", type=at_least(1), nargs="*", default=[2])
    assert vars(p.parse_args(["--n", "3", "--p", "0.5", "--m", "1", "4"])) == dict(n=3, p=0.5, m=[1, 4])
    with pytest.raises(SystemExit) as exc:
        p.parse_args(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("script", SCRIPTS + ("make_cifar_archive",))
def test_every_bounded_default_satisfies_its_type(script):
    """argparse runs type= on flags given, not on a non-string default: a default must pass it too."""
    import importlib
    parser = importlib.import_module(script).build_parser()
    for a in parser._actions:
        if getattr(a.type, "__qualname__", "").startswith(("at_least.", "float_in.")) and a.default is not None:
            for value in a.default if isinstance(a.default, list) else [a.default]:
                assert a.type(str(value)) == value, (script, a.option_strings)


def test_atomic_write_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """The file's bytes are fsync-ed before the rename and the folder after it: on a network file
    system a node failing between the two could otherwise leave last.pt truncated."""
    import os

    import common
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", None)) or real_replace(a, b))
    common.atomic_write(tmp_path / "last.pt", lambda f: f.write(b"weights"))
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]
    assert (tmp_path / "last.pt").read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left
