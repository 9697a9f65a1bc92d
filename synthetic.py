"""The synthetic datasets: shapes on clutter, whose every object box and colour is known, and a
variant with failure causes planted in known test images (issue 24), to check that a stated cause
is the true one.

    synthetic           ten classes decided by an object's shape
    synthetic-planted   the same, with three causes planted: label errors (test labels flipped),
                        a context cue (a striped background that in training goes with one class,
                        put behind test objects of other classes), look-alikes (two classes whose
                        shapes nearly coincide)
    synthetic-control   the same images drawn with nothing planted: the control for false alarms

Each returns the fields of common.Dataset as a dict (common builds the Dataset: no import cycle).
"""
import torch
import torch.nn.functional as F

SHAPES = ("square", "disc", "ring", "triangle", "cross", "x", "hbar", "vbar", "diamond", "frame")


def _shape_masks(size=11):
    """Boolean masks of the ten synthetic object classes."""
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    d = (xx ** 2 + yy ** 2).sqrt()
    h = size / 2
    return torch.stack([
        (xx.abs() < h - 1) & (yy.abs() < h - 1),           # square
        d < h - 0.5,                                        # disc
        (d < h - 0.5) & (d > h - 3),                        # ring
        (yy > -h + 1) & (xx.abs() < (yy + h) / 2),          # triangle
        (xx.abs() < 1.5) | (yy.abs() < 1.5),                # cross
        ((xx - yy).abs() < 1.5) | ((xx + yy).abs() < 1.5),  # x
        yy.abs() < 2,                                       # horizontal bar
        xx.abs() < 2,                                       # vertical bar
        (xx.abs() + yy.abs()) < h - 0.5,                    # diamond
        ((xx.abs() > h - 3) | (yy.abs() > h - 3)),          # frame
    ])


def draw_objects(y, g, size=32, colour=None, masks=None, striped=None):
    """uint8 images of the shapes masks[y] (default: SHAPES') on clutter, and their boxes (x0, y0,
    x1, y1). colour: (n, 3) in [0, 1]; by default a random colour per image, drawn from g.
    striped: (n,) bool, the images whose background is STRIPES instead of clutter."""
    n = len(y)
    masks = _shape_masks() if masks is None else masks
    s = masks.shape[-1]
    # Clutter: blocky low-frequency colour noise plus fine noise, so no pixel statistic
    # outside the object reveals the class.
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=g)
    img = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False) * 0.6
    img += 0.15 * torch.rand(n, 3, size, size, generator=g)
    if striped is not None:
        fine = 0.15 * torch.rand(n, 3, size, size, generator=g)
        img = torch.where(striped.view(n, 1, 1, 1), stripes(size) + fine, img)
    if colour is None:
        colour = 0.3 + 0.7 * torch.rand(n, 3, generator=g)
    x0 = torch.randint(0, size - s + 1, (n,), generator=g)
    y0 = torch.randint(0, size - s + 1, (n,), generator=g)
    rows = y0[:, None] + torch.arange(s)  # (n, s)
    cols = x0[:, None] + torch.arange(s)
    full = torch.zeros(n, size, size, dtype=torch.bool)
    full[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = masks[y]
    img = torch.where(full[:, None], colour.view(n, 3, 1, 1).expand(-1, -1, size, size), img)
    boxes = torch.stack([x0, y0, x0 + s, y0 + s], 1)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), boxes


def make_synthetic(n_train=5000, n_test=1000, seed=0, size=32):
    """Ten classes decided by an object's shape, of random colour, at a random place on clutter."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.randint(0, len(SHAPES), (n,), generator=g)
        return (y, *draw_objects(y, g, size))

    train_y, train_x, _ = split(n_train)
    test_y, test_x, test_boxes = split(n_test)
    return dict(name="synthetic", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                classes=list(SHAPES), test_boxes=test_boxes)


#### Planted causes

CUE_CLASS = 4  # cross: in training, most crosses and few others lie on STRIPES
CUE_SHARE, OTHER_STRIPED = 0.98, 0.003  # of the cue class's training images, and of the others'
LOOKALIKE = (0, 9)  # square, and a square with one corner notched, in place of the frame
CONTEXT_SHARE, FLIP_SHARE = 0.06, 0.03  # of the test images: striped non-crosses, flipped labels


def stripes(size):
    """A diagonal two-tone stripe pattern (3, size, size) in [0, 0.6]: the planted context."""
    r = torch.arange(size)
    band = ((r[:, None] + r[None, :]) // 3) % 2
    return torch.stack([0.55 * band, 0.1 + 0.2 * band, 0.5 * (1 - band)]).float()


def _lookalike_masks():
    """SHAPES' masks with the frame replaced by a square notched at one corner."""
    masks = _shape_masks().clone()
    masks[9] = masks[0].clone()
    masks[9][1:3, 1:3] = False  # 4 of the square's 81 pixels: the two nearly coincide
    return masks


def make_planted(n_train=5000, n_test=1000, seed=0, size=32, plant=True):
    """synthetic-planted (plant=True) or its control (False): the same draws, so that the two differ
    only in what is planted. `planted` names the test rows of each planted cause."""
    g = torch.Generator().manual_seed(seed)
    classes = list(SHAPES[:9]) + (["notched_square"] if plant else [SHAPES[9]])
    masks = _lookalike_masks() if plant else _shape_masks()

    def split(n, striped_share):
        y = torch.randint(0, len(SHAPES), (n,), generator=g)
        u = torch.rand(n, generator=g)
        striped = u < striped_share(y)
        x, boxes = draw_objects(y, g, size, masks=masks, striped=striped)
        return y, x, boxes, striped

    cue = (lambda y: torch.where(y == CUE_CLASS, CUE_SHARE, OTHER_STRIPED)) if plant else \
          (lambda y: torch.full(y.shape, OTHER_STRIPED))
    train_y, train_x, _, _ = split(n_train, cue)
    test_y, test_x, test_boxes, striped = split(n_test, cue)
    # Planted in the test set: stripes behind some objects of other classes, and flipped labels.
    u, shift = torch.rand(n_test, generator=g), torch.randint(1, len(SHAPES), (n_test,), generator=g)
    context = (u < CONTEXT_SHARE) & (test_y != CUE_CLASS) & ~striped
    flipped = (u >= CONTEXT_SHARE) & (u < CONTEXT_SHARE + FLIP_SHARE)
    planted = None
    if plant:
        rows = lambda mask: mask.nonzero().flatten().tolist()  # noqa: E731
        # Context: every other class's object on the stripes, planted or (rarely) drawn so.
        behind = context | (striped & (test_y != CUE_CLASS) & ~flipped)
        planted = {"label_error": rows(flipped), "context": rows(behind),
                   "lookalike": rows(torch.isin(test_y, torch.tensor(LOOKALIKE))),  # labels as drawn
                   "cue_class": CUE_CLASS, "lookalike_classes": list(LOOKALIKE)}
        # The same class on the cue's background, at a new place and in a new colour.
        on_stripes = torch.ones(int(context.sum()), dtype=torch.bool)
        test_x[context], test_boxes[context] = draw_objects(test_y[context], g, size, masks=masks,
                                                            striped=on_stripes)
        test_y = torch.where(flipped, (test_y + shift) % len(SHAPES), test_y)
    return dict(name="synthetic-planted" if plant else "synthetic-control", train_x=train_x,
                train_y=train_y, test_x=test_x, test_y=test_y, classes=classes, test_boxes=test_boxes,
                planted=planted)
