"""cam.py's grad_cam against an independent computation, its side-effect guarantees and layer
lookup; gradcam.py's synthetic "explanations point at the object" check and command line end to end."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cam
import evaluate
import failures
import gradcam
import train
from cam import grad_cam
from common import DEFAULT_CAM_LAYER, UserError, build_model, normalize
from contract import dataset_from_config, load_checkpoint_model
from hypotheses import compose_hypothesis


def reference_cam(features_fn, head_fn, images, targets):
    """Grad-CAM without hooks: the layer's output A is computed explicitly, the rest of the
    network applied to it, and d(logit)/dA taken with autograd, one image at a time."""
    maps = []
    for x, t in zip(images, targets):
        with torch.enable_grad():
            a = features_fn(x[None]).detach().requires_grad_(True)
            grad, = torch.autograd.grad(head_fn(a)[0, t], a)
        cam = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        maps.append(cam / cam.max() if cam.max() > 0 else cam)
    return torch.stack(maps)


def resnet_split(model, layer):
    """(features up to `layer`, the rest) for torchvision's ResNet, written out by hand."""
    stages = ["layer1", "layer2", "layer3", "layer4"]
    k = stages.index(layer) + 1

    def features(x):
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for s in stages[:k]:
            x = getattr(model, s)(x)
        return x

    def head(a):
        for s in stages[k:]:
            a = getattr(model, s)(a)
        return model.fc(torch.flatten(model.avgpool(a), 1))
    return features, head


def simplecnn_split(model):
    def features(x):
        x = F.max_pool2d(F.relu(model.conv1(x)), 2)
        return model.conv3(F.max_pool2d(F.relu(model.conv2(x)), 2))

    def head(a):
        a = F.max_pool2d(F.relu(a), 2)
        return model.fc2(F.relu(model.fc1(torch.flatten(a, 1))))
    return features, head


def hooks_left(model):
    return [name for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
            or getattr(m, "_backward_pre_hooks", None)]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet18", 10).eval()


@pytest.fixture(scope="module")
def simplecnn():
    torch.manual_seed(0)
    return build_model("simplecnn", 10).eval()


@pytest.fixture
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_resnet_matches_hook_free_autograd(resnet, images, layer):
    targets = torch.tensor([0, 3, 7, 9])
    ours = grad_cam(resnet, getattr(resnet, layer), images, targets)
    assert ours.shape == (4, 32, 32)
    torch.testing.assert_close(ours, reference_cam(*resnet_split(resnet, layer), images, targets),
                               atol=1e-5, rtol=1e-4)


def test_resnet_layer4_grad_cam_equals_cam(resnet, images):
    """After layer4 come only global average pooling and fc, so d logit_c / dA_k(i, j) is
    w_ck / (h w) everywhere: Grad-CAM is CAM (Zhou et al. 2016), sum_k w_ck A_k, divided by h w.
    An independent check that needs neither hooks nor autograd."""
    targets = torch.tensor([1, 4, 4, 8])
    ours = grad_cam(resnet, resnet.layer4, images, targets, scaled=False)
    with torch.no_grad():
        act = resnet_split(resnet, "layer4")[0](images)  # (N, 512, 4, 4)
        cam = torch.einsum("nk,nkhw->nhw", resnet.fc.weight[targets], act)
        cam = F.relu(cam)[:, None] / (act.shape[2] * act.shape[3])
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    assert cam.amax() > 0
    torch.testing.assert_close(ours, cam, atol=1e-6, rtol=1e-4)


def test_simplecnn_matches_hook_free_autograd_for_predicted_class(simplecnn, images):
    ours = grad_cam(simplecnn, simplecnn.conv3, images)  # targets=None: the predicted class
    with torch.no_grad():
        pred = simplecnn(images).argmax(1)
    torch.testing.assert_close(ours, reference_cam(*simplecnn_split(simplecnn), images, pred),
                               atol=1e-5, rtol=1e-4)


def test_layer_followed_by_an_in_place_op(resnet, images):
    """layer4.1.bn2's output gets `+= identity` in place, then an in-place ReLU."""
    block = resnet.layer4[1]
    features3, _ = resnet_split(resnet, "layer3")

    def features(x):
        x = resnet.layer4[0](features3(x))
        return block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))), x

    def head(a, identity):
        return resnet.fc(torch.flatten(resnet.avgpool(F.relu(a + identity)), 1))
    targets = torch.tensor([1, 2, 3, 4])
    ref = reference_cam(lambda x: features(x)[0],
                        lambda a: head(a, features(images[:1])[1]), images[:1], targets[:1])
    ours = grad_cam(resnet, block.bn2, images[:1], targets[:1])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_matches_pytorch_grad_cam(resnet, images):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    targets = [0, 3, 7, 9]
    ours = grad_cam(resnet, resnet.layer3, images, targets)
    with pgc.GradCAM(model=resnet, target_layers=[resnet.layer3]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=images,
                                      targets=[ClassifierOutputTarget(t) for t in targets]))
    # pytorch-grad-cam scales min..max to 0..1, grad_cam divides by the max.
    lo = ours.amin((1, 2), keepdim=True)
    torch.testing.assert_close((ours - lo) / (1 - lo), theirs, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("arch,layer", [("resnet18", "layer3"), ("simplecnn", "conv3")])
def test_batch_equals_image_by_image(arch, layer, images):
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    target_layer = dict(model.named_modules())[layer]
    batch = grad_cam(model, target_layer, images)
    single = torch.cat([grad_cam(model, target_layer, x[None]) for x in images])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-4)
    assert batch.min() >= 0 and batch.amax((1, 2)).allclose(torch.ones(4))


def test_train_mode_model_gives_eval_maps_and_keeps_its_state(images):
    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    # Non-trivial BatchNorm statistics, so train-mode maps would differ from eval-mode ones.
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32) * 3 + 1)
    expected = grad_cam(model.eval(), model.layer4, images)
    model.train()
    model.layer1.eval()  # a mixed state must come back exactly as it was
    model.fc.weight.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = images.clone()
    got = grad_cam(model, model.layer4, x)
    torch.testing.assert_close(got, expected)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for k, v in model.state_dict().items():  # BatchNorm running stats untouched
        assert torch.equal(v, state[k]), k
    assert torch.equal(x, images) and not x.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not hooks_left(model)


def test_eval_model_stays_in_eval(simplecnn, images):
    grad_cam(simplecnn, simplecnn.conv3, images)
    assert not any(m.training for m in simplecnn.modules())


class FailsAfterConv3(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = build_model("simplecnn", 10)

    def forward(self, x):
        self.net.conv3(self.net.conv2(self.net.conv1(x)[:, :, ::2, ::2])[:, :, ::2, ::2])
        raise RuntimeError("boom after the target layer")


@pytest.mark.parametrize("case", ["forward raises", "targets out of range", "wrong length",
                                  "layer runs twice", "layer unused"])
def test_no_hook_or_flag_change_survives_an_exception(case, images):
    targets, error = None, ValueError
    if case == "forward raises":
        model = FailsAfterConv3()
        layer, error = model.net.conv3, RuntimeError
    else:
        model = build_model("resnet18", 10)
        layer = {"layer runs twice": model.layer4[1].relu,  # a block's relu is called twice
                 "layer unused": torch.nn.Conv2d(3, 3, 1)}.get(case, model.layer4)
        targets = {"targets out of range": [0, 1, 2, 10], "wrong length": [0, 1]}.get(case)
    model.train()
    next(model.parameters()).requires_grad_(False)  # a frozen parameter must stay frozen
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(error):
        grad_cam(model, layer, images, targets)
    assert not hooks_left(model) and not hooks_left(layer)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(m.training for m in model.modules())


def test_all_zero_map_stays_zero(images):
    model = build_model("simplecnn", 10).eval()
    with torch.no_grad():
        model.fc2.weight.zero_()  # no logit depends on the features: zero gradient
    cams = grad_cam(model, model.conv3, images)
    assert torch.equal(cams, torch.zeros(4, 32, 32))


def test_find_layer_lists_valid_names():
    model = build_model("resnet18", 10)
    assert cam.find_layer(model, "layer4.1.conv2", "resnet18") is model.layer4[1].conv2
    with pytest.raises(UserError, match=r"layer1, layer2, layer3, layer4, avgpool, fc"):
        cam.find_layer(model, "layer5", "resnet18")
    with pytest.raises(UserError, match="unknown --layer ''"):
        cam.find_layer(model, "", "resnet18")  # the model itself is no layer


@pytest.mark.parametrize("arch", ["resnet18", "simplecnn"])
def test_find_layer_defaults_to_the_architectures_layer(arch):
    model = build_model(arch, 10)
    assert cam.layer_name_or_default(None, arch) == DEFAULT_CAM_LAYER[arch]
    assert cam.layer_name_or_default("conv1", arch) == "conv1"
    assert cam.find_layer(model, None, arch) is model.get_submodule(DEFAULT_CAM_LAYER[arch])


def test_overlay_blends_the_map_over_the_upscaled_image():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    plain = cam.overlay(image, None)
    assert plain.shape == (128, 128, 3) and plain.dtype == np.uint8 and not plain.any()
    hot = cam.overlay(image, torch.ones(32, 32))  # JET's 1.0 is dark red: (128, 0, 0) in RGB
    assert hot.dtype == np.uint8 and (hot[..., 0] == 64).all() and not hot[..., 1:].any()


#### A trained SimpleCNN on the synthetic set: object boxes are known

@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """SimpleCNN, 6 short epochs on the synthetic set (~30 s on 2 cores), evaluated."""
    runs = tmp_path_factory.mktemp("runs")
    result = train.main(["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam",
                         "--epochs", "6", "--batch-size", "64", "--milestones",
                         "--runs-dir", str(runs), "--name", "syn"])
    evaluate.main(["--run", result["run_dir"]])
    return Path(result["run_dir"])


def test_peak_falls_inside_the_object(synthetic_run):
    model, config, _ = load_checkpoint_model(synthetic_run)
    ds = dataset_from_config(config)
    x = normalize(ds.test_x, config["mean"], config["std"])
    with torch.no_grad():
        right = model(x).argmax(1) == ds.test_y
    cams = grad_cam(model, model.get_submodule(DEFAULT_CAM_LAYER["simplecnn"]), x[right])  # predicted (= true) class
    peak = cams.flatten(1).argmax(1)
    py, px = peak // 32, peak % 32

    def inside(boxes):
        return ((boxes[:, 0] <= px) & (px < boxes[:, 2]) & (boxes[:, 1] <= py) & (py < boxes[:, 3]))
    boxes = ds.test_boxes[right]
    rate = inside(boxes).float().mean().item()
    # Chance: the same peaks scored against other images' boxes (about the box's 12% of the area).
    chance = inside(boxes.roll(1, 0)).float().mean().item()
    print(f"peak in box: {rate:.3f} of {int(right.sum())} correct images; chance {chance:.3f}")
    assert rate >= 0.6 and rate >= 3 * chance


def test_cli_end_to_end(synthetic_run, tmp_path):
    run = synthetic_run
    failures.main(["--run", str(run), "--num-cases", "3"])
    first = json.loads((run / "failures.json").read_text())["cases"][0]["index"]
    hyp = tmp_path / "hyp.json"
    hyp.write_text(json.dumps({str(first): "the analyst's own idea"}))
    failures.main(["--run", str(run), "--num-cases", "3", "--hypotheses", str(hyp)])
    before = (run / "failures.json").read_bytes()
    gradcam.main(["--run", str(run)])
    out = gradcam.main(["--run", str(run)])  # a second run gives the same file
    assert (run / "failures.json").read_bytes() == before  # read, never rewritten
    for f in ("gradcam.png", "gradcam.npz", "failures.png"):
        assert (run / f).stat().st_size > 0
    cases = json.loads(before)["cases"]
    data = json.loads((run / "gradcam.json").read_text())
    assert out["cases"] == data["cases"] and data["layer"] == "relu3"
    ref = data["reference"]
    assert ref["map_size"] == [8, 8] and ref["image_size"] == [32, 32]  # relu3: conv3's 8x8 map
    assert [c["index"] for c in data["cases"]] == [c["index"] for c in cases]
    for case, explained in zip(cases, data["cases"]):
        ev = explained["evidence"]
        assert ev["layer"] == "relu3" and 0 <= ev["pred"]["centre_mass"] <= 1
        assert isinstance(ev["pred"]["peak_in_box"], bool) and "box_mass" in ev["true"]
        assert ev["pred_true_correlation"] is None or -1 <= ev["pred_true_correlation"] <= 1
        assert all(s.startswith("Grad-CAM") for s in explained["suggestions"])
        if case["index"] == first:
            assert explained["hypothesis"] == "the analyst's own idea"
            assert explained["hypothesis_source"] == "analyst"
        else:  # composed once, from both kinds of evidence
            both = dict(case, suggestions=case["suggestions"] + explained["suggestions"])
            assert explained["hypothesis"] == compose_hypothesis(both)
            assert explained["hypothesis_source"] == "auto"
    npz = np.load(run / "gradcam.npz")
    assert npz["maps_pred"].shape == npz["maps_true"].shape == (3, 32, 32)
    assert str(npz["layer"]) == "relu3"
    assert list(npz["classes"]) == json.loads((run / "config.json").read_text())["classes"]
    assert list(npz["indices"]) == [c["index"] for c in cases]
    np.testing.assert_allclose(npz["maps_pred"], out["maps_pred"].numpy())
    raw = npz["raw_true"]  # unscaled: the scaled maps are these over their maxima
    peak = raw.max((1, 2), keepdims=True)
    scaled = np.where(peak > 0, raw / np.where(peak > 0, peak, 1), 0)
    np.testing.assert_allclose(npz["maps_true"], scaled, rtol=1e-5, atol=1e-6)


def test_cli_bad_input(synthetic_run, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"unknown --layer 'conv9' for simplecnn; choose one of "
                                         r"conv1, conv2, conv3, relu1, relu2, relu3, fc1, fc2"):
        gradcam.main(["--run", str(synthetic_run), "--layer", "conv9"])
    with pytest.raises(SystemExit, match="run python failures.py"):
        gradcam.main(["--run", str(synthetic_run), "--cases", str(tmp_path / "none.json")])
    failures.main(["--run", str(synthetic_run), "--num-cases", "2"])
    stale = json.loads((synthetic_run / "failures.json").read_text())
    stale["cases"][1]["confidence"] -= 0.01  # as if written from another checkpoint
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    with pytest.raises(SystemExit, match="was not written from the predictions of"):
        gradcam.main(["--run", str(synthetic_run), "--cases", str(tmp_path / "stale.json")])
    with pytest.raises(SystemExit, match="evaluate.py evaluated the last checkpoint"):
        gradcam.main(["--run", str(synthetic_run), "--checkpoint", "best"])
    assert json.loads((tmp_path / "stale.json").read_text()) == stale  # left as it was
