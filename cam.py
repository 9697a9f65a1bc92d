"""Grad-CAM (Selvaraju et al. 2017) written by hand: the method, apart from the scripts that use it.

    from cam import find_layer, grad_cam, overlay
    layer = find_layer(model, None, "resnet18")   # the architecture's default layer: layer4
    maps = grad_cam(model, layer, images)         # (N, H, W) in [0, 1], for the predicted classes
    rgb = overlay(image_u8, maps[0].cpu())        # the image with the map blended on top

A forward hook on one module keeps its output and a tensor hook on that output its gradient
(LayerCapture); the map is the ReLU of the activation weighted by the spatially averaged gradient,
upsampled bilinearly to the image and divided by its maximum. gradcam.py explains the failure
cases with it, faithfulness.py tests the maps, compare.py draws the improved model's, and
tools/bench_gradcam.py times it against pytorch-grad-cam. Importing this module does nothing.
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from common import DEFAULT_CAM_LAYER, UserError

CENTRE_AREA = 0.5  # the central box covers this share of the image; the rest is "the border"


#### Layers

def layer_name_or_default(name, arch):
    """The layer to explain: `name`, or the architecture's default (DEFAULT_CAM_LAYER) if none."""
    return name or DEFAULT_CAM_LAYER[arch]


def find_layer(model, name, arch):
    """The module called `name` (None: the architecture's default), or a UserError listing the
    names that make sense to pass."""
    name = DEFAULT_CAM_LAYER[arch] if name is None else name
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    top = [n for n in modules if n and "." not in n]
    nested = [n for n, m in modules.items() if "." in n and isinstance(m, torch.nn.Conv2d)]
    hint = f" or a nested module such as {nested[-1]}" if nested else ""
    raise UserError(f"unknown --layer {name!r} for {arch}; choose one of {', '.join(top)}{hint}")


@torch.no_grad()
def layer_map_size(model, layer, x):
    """[h, w] of the layer's feature map for inputs like x: how coarse its Grad-CAM maps are."""
    size = []
    handle = layer.register_forward_hook(lambda m, i, out: size.extend(out.shape[-2:]))
    try:
        model(x)
    finally:
        handle.remove()
    return [int(v) for v in size[:2]]


def centre_mask(h, w):
    """Pixels whose centres lie in the central box of CENTRE_AREA of the image's area: where a
    CIFAR object mostly is. gradcam.py measures a map's mass there; causes.py blanks the rest (the
    border ring)."""
    side = CENTRE_AREA ** 0.5
    ys, xs = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
    lo, hi = (1 - side) / 2, (1 + side) / 2
    return ((ys >= lo) & (ys <= hi))[:, None] & ((xs >= lo) & (xs <= hi))[None, :]


#### Hooks

class LayerCapture:
    """Within `with LayerCapture(layer) as capture:`, a forward hook on `layer` keeps its output in
    capture.activation, as the place where autograd starts, and a tensor hook keeps that output's
    gradient in capture.gradient once a backward pass reaches it. The hook is removed on exit,
    also after an error (module backward hooks are not used: they break on in-place ReLU)."""

    def __init__(self, layer):
        self.layer, self.activation, self.gradient, self._handle = layer, None, None, None

    def __enter__(self):
        self._handle = self.layer.register_forward_hook(self._keep_activation)
        return self

    def __exit__(self, *exc_info):
        self._handle.remove()
        return False  # an error inside the block goes on

    def _keep_activation(self, module, inputs, output):
        if self.activation is not None:
            raise ValueError("the target layer runs more than once per forward pass (a shared "
                             "module such as a ResNet block's relu); choose another layer")
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise ValueError("the target layer must output a (N, C, h, w) feature map")
        # Autograd starts here: the layers before it build no graph, and the backward pass
        # covers only what follows. Returning a copy lets later in-place ops (ReLU) modify it
        # without touching the leaf whose gradient the tensor hook reads.
        self.activation = output.detach().requires_grad_(True)
        self.activation.register_hook(self._keep_gradient)
        return self.activation.clone()

    def _keep_gradient(self, grad):
        self.gradient = grad


@contextlib.contextmanager
def explanation_mode(model):
    """The model in eval mode (BatchNorm in train mode would couple the images of a batch) with no
    parameter gradients (they are most of a backward pass); every module's mode and every
    parameter's requires_grad are restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grad_flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training


#### Grad-CAM

def grad_cam(model, target_layer, images, targets=None, scaled=True):
    """Grad-CAM maps (N, H, W) in [0, 1] for normalised images (N, C, H, W) on the model's device.

    targets: None (the predicted class) or one class index per image; the score is the raw logit.
    scaled=False returns the maps before the per-image scaling, whose magnitudes can be compared.
    The model runs in eval mode (BatchNorm in train mode would couple the images of a batch) and
    every module's mode, the parameters' requires_grad and the input are left as they were.
    Each map is divided by its maximum, so an all-zero map stays zero (pytorch-grad-cam subtracts
    the minimum first: the maps then differ by an affine map per image, with correlation 1).
    """
    targets = checked_targets(images, targets)
    with explanation_mode(model), LayerCapture(target_layer) as capture:
        act, grad = layer_gradient(model, capture, images, targets)
    with torch.no_grad():
        cam = weighted_activation(act, grad, images.shape[-2:])
        return scale_per_image(cam) if scaled else cam


def checked_targets(images, targets):
    """targets as a long tensor on the images' device (None stays None), or a ValueError."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if targets is not None:
        targets = torch.as_tensor(targets, dtype=torch.long, device=images.device).reshape(-1)
        if len(targets) != len(images):
            raise ValueError(f"got {len(targets)} targets for {len(images)} images")
    return targets


def layer_gradient(model, capture, images, targets):
    """The captured layer's activation (N, K, h, w) for the images and the gradient of the target
    classes' logits (None: the predicted ones) with respect to it."""
    with torch.enable_grad():
        logits = model(images)  # (N, num_classes)
        if capture.activation is None:
            raise ValueError("the target layer was not used in the forward pass")
        if targets is None:
            targets = logits.argmax(1)
        elif targets.min() < 0 or targets.max() >= logits.shape[1]:
            raise ValueError(f"targets must be class indices in [0, {logits.shape[1]})")
        # The images are independent in eval mode, so the gradient of the summed scores
        # holds each image's own gradient.
        score = logits.gather(1, targets[:, None]).sum()
        act = capture.activation  # (N, K, h, w)
        # inputs=[act]: nothing but the activation's gradient is computed or accumulated.
        torch.autograd.backward(score, inputs=[act])
        return act, capture.gradient


def weighted_activation(act, grad, size):
    """The unscaled maps (N, H, W): the ReLU of the channels weighted by their mean gradient,
    upsampled bilinearly to the image size (H, W)."""
    weights = grad.float().mean((2, 3), keepdim=True)  # (N, K, 1, 1)
    cam = F.relu((weights * act.float()).sum(1, keepdim=True))  # (N, 1, h, w)
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]


def scale_per_image(cam):
    """(N, H, W) non-negative maps divided by their maxima; an all-zero map stays zero."""
    peak = cam.amax((1, 2), keepdim=True)
    return torch.where(peak > 0, cam / peak.clamp(min=torch.finfo(cam.dtype).tiny), cam)


#### Figures

def overlay(image_u8, cam, size=128):
    """The image upscaled (bicubic) with the map in OpenCV's JET colours blended on top, RGB uint8."""
    import cv2
    img = cv2.resize(image_u8.permute(1, 2, 0).numpy(), (size, size), interpolation=cv2.INTER_CUBIC)
    if cam is None:
        return img
    heat = cv2.resize(cam.numpy().astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(255 * heat.clip(0, 1)), cv2.COLORMAP_JET)[:, :, ::-1]
    return np.uint8(0.5 * img + 0.5 * heat)
