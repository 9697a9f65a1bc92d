"""CIFAR-10-C-style corruptions of uint8 image batches, severities 1-5: batched torch on the
images' device, deterministic for a seed. corruptions.py runs them as a grid over a test set.

    from corrupt import corrupt, NAMES
    foggy = corrupt(images_u8, "fog", severity=3, seed=0)

The severity constants are those of Hendrycks & Dietterich (2019), make_cifar_c.py in
github.com/hendrycks/robustness (ImageNet-C/create_c); the code is written anew. The deterministic
ones, and spatter given the same normal draws, match NumPy/SciPy/OpenCV/PIL versions of the
published functions within 0.01 of a level before rounding (tests/test_corruptions.py). Differences:
  all       torch random generators (not NumPy's): the noise differs draw by draw, not in law;
            outputs are rounded to uint8 where np.uint8() truncated (0.5/255 darker on average there).
  frost     left out: it blends crops of six frost photographs that are not in this repository.
  spatter   the published water shading (Canny edges, distance transform, histogram equalisation)
            runs per image with OpenCV on the CPU; a layer without drops gets no water, where the
            published code divides 0 by 0 (never seen in tests).
  motion_blur, snow  ImageMagick's MotionBlurImage re-implemented: a one-sided line of 2*radius+1
            taps with Gaussian weights at the random angle, edge pixels repeated; within 1 level of
            ImageMagick 6.9.11's -motion-blur (which truncates). Severities 3 and 4 differ only in
            taps of weight < 1e-9: the same corruption.
  glass_blur  what the published loop does (a copy from a neighbour, see glass_blur), not a swap.
  fog       the same diamond-square plasma fractal, batched.
  elastic_transform  cv2.warpAffine and scipy map_coordinates as grid_sample with the same borders.
  jpeg_compression   as published (PIL), per image on the CPU, whatever the images' device.
Not ordered by distortion in the published constants: saturate (x0.3, x0.1, x1.5, ...), glass_blur,
elastic_transform (its affine shift shrinks from severity 1 to 5; the smoothed displacement that
grows stays under a pixel) and spatter (water at severities 1-3, mud at 4 and 5).
"""

import math
from io import BytesIO

import numpy as np
import torch
import torch.nn.functional as F

from common import UserError


#### Filters shared by several corruptions

def _pad(x, ph, pw, mode):
    """Pad the last two dims, named as scipy.ndimage does: nearest (edge repeated), reflect
    (d c b a | a b c d, half-sample symmetric) or mirror (d c b | a b c d, OpenCV's REFLECT_101)."""
    def index(n, r):
        i = torch.arange(-r, n + r, device=x.device)
        if mode == "nearest":
            return i.clamp(0, n - 1)
        if mode == "reflect":
            i = torch.where(i < 0, -1 - i, i)
            return torch.where(i >= n, 2 * n - 1 - i, i)
        i = i.abs()
        return torch.where(i >= n, 2 * n - 2 - i, i)
    return x[..., index(x.shape[-2], ph), :][..., index(x.shape[-1], pw)]


def _conv(x, kernel, mode):
    """Correlate every channel of x (N, C, H, W) with an odd-sized 2-D kernel, padding as `mode`."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    xp = _pad(x, kh // 2, kw // 2, mode).reshape(n * c, 1, h + kh - 1, w + kw - 1)
    return F.conv2d(xp, kernel.to(x)[None, None]).view(n, c, h, w)


def _gaussian(x, sigma, mode="nearest", truncate=4.0):
    """skimage.filters.gaussian (scipy's gaussian_filter) on every channel, separably."""
    i = torch.arange(-int(truncate * sigma + 0.5), int(truncate * sigma + 0.5) + 1, device=x.device)
    k = torch.exp(-0.5 * (i / sigma) ** 2)
    k = k / k.sum()
    return _conv(_conv(x, k[None], mode), k[:, None], mode)


def _motion_blur(x, radius, sigma, angle):
    """ImageMagick's motion blur: a one-sided line kernel along angle (N,) degrees."""
    n, c, h, w = x.shape
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, device=x.device)
    k = torch.exp(-(i.float() ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    a = torch.deg2rad(angle)[:, None]
    dx = torch.ceil(i * torch.cos(a) - 0.5).long()  # (N, width) pixel offsets, as ImageMagick rounds
    dy = torch.ceil(i * torch.sin(a) - 0.5).long()
    p = width - 1
    flat = F.pad(x, (p,) * 4, mode="replicate").flatten(2)  # (N, C, (H + 2p) * (W + 2p))
    r, q = torch.arange(h, device=x.device) + p, torch.arange(w, device=x.device) + p
    base = r[:, None] * (w + 2 * p) + q[None]  # (H, W) index of each pixel in the padded image
    out = torch.zeros_like(x)
    for j in range(width):
        idx = base + (dy[:, j] * (w + 2 * p) + dx[:, j])[:, None, None]  # (N, H, W)
        out += k[j] * flat.gather(2, idx.view(n, 1, h * w).expand(-1, c, -1)).view(n, c, h, w)
    return out


def _clipped_zoom(x, z):
    """Zoom the centre of square images by z (bilinear, corners aligned like scipy's zoom) and crop."""
    h = x.shape[-1]
    ch = math.ceil(h / z)
    top = (h - ch) // 2
    size = round(ch * z)
    y = F.interpolate(x[..., top:top + ch, top:top + ch], size=(size, size), mode="bilinear",
                      align_corners=True)
    t = (size - h) // 2
    return y[..., t:t + h, t:t + h]


def _sample(x, px, py, align_corners):
    """Bilinear x at pixel coordinates px, py (N, H, W), reflecting at the border: about the edge
    pixels' centres (align_corners, OpenCV REFLECT_101) or their outer edges (scipy 'reflect')."""
    h, w = x.shape[-2:]
    if align_corners:
        grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], -1)
    else:
        grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners)


def _rgb_to_hsv(x):
    v, m = x.amax(1), x.amin(1)
    d = v - m
    r, g, b = x.unbind(1)
    dd = d.clamp_min(1e-12)
    h = torch.where(v == r, ((g - b) / dd) % 6, torch.where(v == g, (b - r) / dd + 2, (r - g) / dd + 4))
    return torch.stack([torch.where(d > 0, h / 6, 0), torch.where(v > 0, d / v.clamp_min(1e-12), 0), v], 1)


def _hsv_to_rgb(hsv):
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    k = (torch.tensor([5.0, 3.0, 1.0], device=hsv.device).view(1, 3, 1, 1) + 6 * h) % 6
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def _rand(shape, lo, hi, g, device):
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device)


#### Corruptions: x (N, 3, H, W) float in [0, 1], c the severity's constants, g a torch.Generator

def gaussian_noise(x, c, g):
    return x + c * torch.randn(x.shape, generator=g, device=x.device)


def shot_noise(x, c, g):
    return torch.poisson(x * c, generator=g) / c


def impulse_noise(x, c, g):  # skimage's salt & pepper: a share c of all values, half 0, half 1
    hit = torch.rand(x.shape, generator=g, device=x.device) < c
    salt = torch.rand(x.shape, generator=g, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def speckle_noise(x, c, g):
    return x + x * c * torch.randn(x.shape, generator=g, device=x.device)


def gaussian_blur(x, c, g):
    return _gaussian(x, c)


def glass_blur(x, c, g):
    """Blur, move pixels by random steps of up to max_delta (toward the top left), blur again.

    The published loop "swaps" NumPy views, which copies instead: x[h, w] takes its neighbour's
    value and the neighbour keeps its own. Its sweep reaches every source after its target, so
    each pass is one gather from the unchanged image, which is what this does.
    """
    sigma, delta, iterations = c
    x = (_gaussian(x, sigma) * 255).floor()  # the published code stores the first blur as uint8
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)[:, None].expand(h, w)
    cols = torch.arange(w, device=x.device)[None].expand(h, w)
    inner = (rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta)
    for _ in range(iterations):
        d = torch.randint(-delta, delta, (2, n, h, w), generator=g, device=x.device) * inner
        idx = ((rows + d[0]) * w + cols + d[1]).view(n, 1, h * w).expand(-1, x.shape[1], -1)
        x = x.flatten(2).gather(2, idx).view(x.shape)
    return _gaussian(x / 255, sigma)


def defocus_blur(x, c, g):
    radius, alias_blur = c
    r = torch.arange(-8, 9, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None] ** 2) <= radius ** 2).float()
    k3 = torch.exp(-torch.tensor([-1.0, 0.0, 1.0]) ** 2 / (2 * alias_blur ** 2))
    kernel = _conv((disk / disk.sum())[None, None], torch.outer(k3, k3) / k3.sum() ** 2, "mirror")[0, 0]
    m = int(r[kernel.abs().sum(0) > 0].abs().max())  # zero outside: crop to the support, same result
    return _conv(x, kernel[8 - m:9 + m, 8 - m:9 + m], "mirror")


def motion_blur(x, c, g):
    return _motion_blur(x, *c, _rand(len(x), -45, 45, g, x.device))


def zoom_blur(x, c, g):
    out = x.clone()
    for z in np.arange(1, c, 0.01):  # NumPy's arange, so the factors are exactly theirs
        out += _clipped_zoom(x, float(z))
    return out / (len(np.arange(1, c, 0.01)) + 1)


def snow(x, c, g):
    loc, scale, zoom, threshold, radius, sigma, blend = c
    n, _, h, w = x.shape
    layer = _clipped_zoom(loc + scale * torch.randn((n, 1, h, w), generator=g, device=x.device), zoom)
    layer = (torch.where(layer < threshold, 0, layer).clamp(0, 1) * 255).floor() / 255  # an 8-bit PNG
    layer = _motion_blur(layer, radius, sigma, _rand(n, -135, -45, g, x.device))
    layer = (layer * 255).round() / 255
    grey = (torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1) * x).sum(1, keepdim=True)
    x = blend * x + (1 - blend) * torch.maximum(x, grey * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def _plasma(n, size, decay, g, device):
    """Diamond-square height maps (n, size, size) in [0, 1]; size a power of two."""
    m = torch.zeros(n, size, size, device=device)
    step, wibble = size, 100.0

    def wibbled(a):
        return a / 4 + wibble * _rand(a.shape, -wibble, wibble, g, device)
    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        sq = corners + corners.roll(-1, 1)
        m[:, half::step, half::step] = wibbled(sq + sq.roll(-1, 2))
        dr, ul = m[:, half::step, half::step], m[:, ::step, ::step]
        m[:, ::step, half::step] = wibbled(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, ::step] = wibbled(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step, wibble = half, wibble / decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def fog(x, c, g):
    amount, decay = c
    n, _, h, w = x.shape
    top = x.amax((1, 2, 3), keepdim=True)
    plasma = _plasma(n, 2 ** math.ceil(math.log2(max(h, w))), decay, g, x.device)
    return (x + amount * plasma[:, None, :h, :w]) * top / (top + amount)


def brightness(x, c, g):
    hsv = _rgb_to_hsv(x)
    hsv[:, 2] = (hsv[:, 2] + c).clamp(0, 1)
    return _hsv_to_rgb(hsv)


def saturate(x, c, g):
    hsv = _rgb_to_hsv(x)
    hsv[:, 1] = (hsv[:, 1] * c[0] + c[1]).clamp(0, 1)
    return _hsv_to_rgb(hsv)


def contrast(x, c, g):
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * c + mean


def elastic_transform(x, c, g):
    """A random affine warp (three points moved by up to c[2]) then a smoothed random displacement
    field (strength c[0], smoothness c[1]); all in pixels of a 32-pixel image, as published."""
    alpha, sigma, shift = (32 * v for v in c)
    n, _, h, w = x.shape
    dev = x.device
    ctr, sq = h // 2, min(h, w) // 3
    src = torch.tensor([[ctr + sq, ctr + sq], [ctr + sq, ctr - sq], [ctr - sq, ctr - sq]],
                       dtype=torch.float32, device=dev)  # (3, 2) as (x, y)
    dst = src + _rand((n, 3, 2), -shift, shift, g, dev)
    a = torch.cat([src, torch.ones(3, 1, device=dev)], 1).expand(n, 3, 3)
    m = torch.linalg.solve(a, dst).transpose(1, 2)  # (N, 2, 3): src -> dst, as getAffineTransform
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                            torch.arange(w, device=dev, dtype=torch.float32), indexing="ij")
    pix = torch.stack([xs, ys], -1).view(1, h * w, 2) - m[:, None, :, 2]
    back = (pix @ torch.linalg.inv(m[:, :, :2]).transpose(1, 2)).view(n, h, w, 2)  # warpAffine's inverse map
    x = _sample(x, back[..., 0], back[..., 1], align_corners=True)
    if alpha == 0:
        return x
    d = alpha * _gaussian(_rand((n, 2, h, w), -1, 1, g, dev), sigma, mode="reflect", truncate=3)
    return _sample(x, xs + d[:, 0], ys + d[:, 1], align_corners=False)


def _box_weights(n_in, n_out, device):
    """PIL's BOX resampling as a matrix (n_out, n_in): equal weights on the input pixels whose
    centres fall in the output pixel's footprint."""
    scale = n_in / n_out
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    t = (torch.arange(n_in, dtype=torch.float64)[None] - centre[:, None] + 0.5) / max(scale, 1.0)
    w = ((t > -0.5) & (t <= 0.5)).double()
    return (w / w.sum(1, keepdim=True)).float().to(device)


def pixelate(x, c, g):
    """PIL's BOX resize down and back up, rounding to 8 bits after each pass as PIL does."""
    v = (x * 255).round()
    h, w = x.shape[-2:]
    for oh, ow in ((int(h * c), int(w * c)), (h, w)):  # down, then back up, both with BOX
        v = (torch.einsum("nchw,vw->nchv", v, _box_weights(v.shape[-1], ow, x.device)) + 0.5).floor()
        v = (torch.einsum("nchw,uh->ncuw", v, _box_weights(v.shape[-2], oh, x.device)) + 0.5).floor()
    return v / 255


def spatter(x, c, g):
    """Water drops (severities 1-3) or mud (4-5), shaped by a smoothed Gaussian noise field."""
    loc, scale = c[:2]
    n, _, h, w = x.shape
    return _spatter(x, loc + scale * torch.randn(n, 1, h, w, generator=g, device=x.device), c)


WATER, MUD = (175, 238, 238), (63, 42, 20)  # pale turquoise and brown, RGB levels as published
DROP_KERNEL = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)  # lights one side


def _drop_shading(level):
    """The published water shading of one (H, W) uint8 liquid layer, with OpenCV on the CPU:
    bright a few pixels inside the drops' edges, lit from one side."""
    import cv2
    dist = cv2.distanceTransform(255 - cv2.Canny(level, 50, 150), cv2.DIST_L2, 5)
    dist = cv2.blur(np.minimum(dist, 20), (3, 3)).astype(np.uint8)  # astype truncates, as published
    dist = cv2.filter2D(cv2.equalizeHist(dist), cv2.CV_8U, DROP_KERNEL)
    return cv2.blur(dist, (3, 3)).astype(np.float32)


def _spatter(x, liquid, c):
    """spatter() for a given noise field (N, 1, H, W), so a test can give the published code the same."""
    _, _, sigma, threshold, strength, mud = c
    liquid = _gaussian(liquid, sigma)
    liquid = torch.where(liquid < threshold, 0, liquid)
    if mud:
        m = _gaussian((liquid > threshold).to(x.dtype), strength)
        m = torch.where(m < 0.8, 0, m)
        return x * (1 - m) + torch.tensor(MUD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) / 255 * m
    # The published uint8 layer: astype truncates, and wraps a level above 255 round to 0 on x86
    # (about 1 image in 4 at severity 3, whose layer reaches past 1).
    level = (liquid * 255).floor().remainder(256)
    shading = np.stack([_drop_shading(im) for im in level[:, 0].to(torch.uint8).cpu().numpy()])
    m = level * torch.from_numpy(shading).to(x)[:, None]
    # A layer without drops has m = 0 everywhere: no water, where the published code divides 0 by 0.
    m = m / m.amax((2, 3), keepdim=True).clamp_min(1e-12) * strength
    return x + m * torch.tensor(WATER, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) / 255


def jpeg_compression(x, c, g):
    """PIL's JPEG at quality c, per image on the CPU, exactly as published."""
    from PIL import Image
    out = []
    for im in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy():
        buf = BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=c)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return torch.from_numpy(np.stack(out)).to(x.device).permute(0, 3, 1, 2).float() / 255


# name: (function, constants of severities 1-5), in the published order; * = in the benchmark's 15
CORRUPTIONS = {
    "gaussian_noise": (gaussian_noise, [0.04, 0.06, 0.08, 0.09, 0.10]),  # *
    "shot_noise": (shot_noise, [500, 250, 100, 75, 50]),  # *
    "impulse_noise": (impulse_noise, [0.01, 0.02, 0.03, 0.05, 0.07]),  # *
    "defocus_blur": (defocus_blur, [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)]),  # *
    "glass_blur": (glass_blur, [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)]),  # *
    "motion_blur": (motion_blur, [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)]),  # *
    "zoom_blur": (zoom_blur, [1.06, 1.11, 1.16, 1.21, 1.26]),  # * arange(1, c, 0.01)
    "snow": (snow, [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)]),  # *
    "fog": (fog, [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)]),  # *
    "brightness": (brightness, [0.05, 0.1, 0.15, 0.2, 0.3]),  # *
    "contrast": (contrast, [0.75, 0.5, 0.4, 0.3, 0.15]),  # *
    "elastic_transform": (elastic_transform, [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                              (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)]),  # *
    "pixelate": (pixelate, [0.95, 0.9, 0.85, 0.75, 0.65]),  # *
    "jpeg_compression": (jpeg_compression, [80, 65, 58, 50, 40]),  # *
    "speckle_noise": (speckle_noise, [0.06, 0.1, 0.12, 0.16, 0.2]),
    "gaussian_blur": (gaussian_blur, [0.4, 0.6, 0.7, 0.8, 1.0]),
    "spatter": (spatter, [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                          (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                          (0.65, 0.1, 0.5, 0.68, 0.6, 1)]),
    "saturate": (saturate, [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)]),
}
NAMES = tuple(CORRUPTIONS)
BENCHMARK = NAMES[:14]  # CIFAR-10-C's 15 without frost
SEVERITIES = (1, 2, 3, 4, 5)

# The published CIFAR-10-C / CIFAR-100-C files, in their order: the benchmark's 15 (frost among them,
# which this module cannot generate) and 4 extras. The mean corruption error is also given over the 15.
CIFAR_C_STANDARD = BENCHMARK[:8] + ("frost",) + BENCHMARK[8:]
CIFAR_C_EXTRA = tuple(n for n in NAMES if n not in BENCHMARK)
CIFAR_C_NAMES = CIFAR_C_STANDARD + CIFAR_C_EXTRA


def mean_error(grid, names):
    """Mean of 1 - accuracy over every corruption x severity (CIFAR-10-C's mean corruption error)."""
    return round(float(np.mean([1 - a for n in names for a in grid[n]])), 6) if names else None


def check_choice(names=(), severities=()):
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad:
        raise UserError(f"unknown corruption {bad[0]!r}; choose 'all' or any of {', '.join(NAMES)}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise UserError(f"severity {bad[0]} is outside 1-5; corruptions have severities 1 to 5")


def corrupt(images, name, severity, seed=0, generator=None):
    """Corrupted copies of uint8 images (N, 3, H, W) on their device; the same seed gives the same
    output on the same device. A generator, if given, must live on that device."""
    check_choice([name], [severity])
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"corrupt() takes uint8 images (N, 3, H, W), not {images.dtype} {tuple(images.shape)}")
    fn, constants = CORRUPTIONS[name]
    g = generator if generator is not None else torch.Generator(images.device).manual_seed(seed)
    out = fn(images.float() / 255, constants[severity - 1], g)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)
