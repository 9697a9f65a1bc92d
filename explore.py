"""A study explorer: every test image that either model gets wrong, in one offline HTML page.

    python explore.py --study runs/smoke                      # writes runs/smoke/explorer.html
    python explore.py --study runs/resnet18-cifar100 --all    # every test image, not only errors

Reads, and never writes, what the chain left in the study folder: both runs' config.json and
predictions.npz (evaluate.py), compare/comparison.json (headline numbers, label-error suspects),
the baseline's failure cases with their Grad-CAM evidence and maps (failures.json, gradcam.json,
gradcam.npz) and their stated causes (causes.json), the test images and the failure cases' nearest
training images (the baseline's dataset). Writes one self-contained page: the thumbnails as two
embedded image sprites (the gallery's, the neighbours'), the data as one JSON blob, and the HTML,
CSS and JavaScript of report/explorer_template.html. Nothing is fetched when it is viewed, so it opens
from disk (file://) and can be mailed or archived with the study.
"""
import base64
import json
import os
from pathlib import Path

import cv2
import numpy as np

from cam import overlay  # the Grad-CAM overlay of the report's figures
from common import UserError, arg_parser, atomic_write, cli_guard, git_commit
from contract import (WRITERS, check_same_test_set, check_test_set, dataset_from_config, read_cases, read_causes,
                      read_config, read_gradcam, read_gradcam_maps, read_json, read_predictions)
from hypotheses import CAUSE_NAMES
from shapes import read_as

# The page's HTML, CSS and JavaScript are a file of their own (read at run time), so that they are
# edited as a web page, not as a Python string.
TEMPLATE = Path(__file__).resolve().parent / "report" / "explorer_template.html"
CATEGORIES = ("corrected", "worsened", "both_wrong", "both_right")  # comparison.json's 2x2, in its order
THUMB = 32           # thumbnail side: CIFAR's own size; 10,000 of them stay under 20 MB
SPRITE_COLUMNS = 64  # a 2048-pixel-wide sprite: well within every browser's image limits
# Lossless PNG while it costs at most this many bytes per thumbnail (synthetic shapes), else JPEG at
# quality 90 (photographs: about 1.1 kB each, where PNG takes twice that).
PNG_BUDGET = 1200
JPEG_QUALITY = 90
TOP_K = 5
DIGITS = 4           # probabilities in the page: 4 decimals
CAM_SIZE = 128       # the Grad-CAM overlays' side, as in the report's figures


#### Reading the study (every file through contract.py, every JSON file checked against its shape)

def require(path):
    if not path.is_file():
        raise UserError(f"{path} is missing; {WRITERS.get(path.name, 'the chain')} writes it "
                        "(make study runs the whole chain)")
    return path


def checked(path, data):
    """data, read from path, if it holds what the explorer reads from its kind of file (shapes.FILE_SHAPES),
    with each optional key it lacks present as null."""
    data, problem = read_as(data, path.name, "the explorer")
    if problem:
        raise UserError(f"{path} {problem}; write it again with {WRITERS[path.name]}")
    return data


def load_runs(study):
    """Both runs' config.json and predictions.npz, which must describe the same test images."""
    if not study.is_dir():
        raise UserError(f"study folder {study} does not exist; make study (or make smoke) writes it")
    runs = [study / "baseline", study / "improved"]
    configs = [checked(require(r / "config.json"), read_config(r)) for r in runs]
    preds = [read_predictions(r) for r in runs]
    check_same_test_set(*(dict(p, run=r, config=c) for r, c, p in zip(runs, configs, preds)))
    return runs, configs, preds


def load_cases(base_run, pred):
    """The baseline's failure cases (failures.json) with their Grad-CAM evidence (gradcam.json),
    their stated causes (causes.json) and their maps for the predicted and the true class
    (gradcam.npz): (cases, explained, stated, maps_pred, maps_true)."""
    path = require(base_run / "failures.json")
    checked(path, read_json(path, "failures file"))
    _, cases = read_cases(path, pred["labels"], pred["indices"], base_run, probs=pred["probs"])
    require(base_run / "gradcam.json")
    explained = checked(base_run / "gradcam.json", read_gradcam(base_run, cases))
    require(base_run / "causes.json")
    stated = checked(base_run / "causes.json", read_causes(base_run, cases))
    maps = read_gradcam_maps(base_run, [c["index"] for c in cases], explained["layer"], explained["checkpoint"])
    return cases, explained, stated, *maps


def dataset(run, config, pred, data_dir):
    """The run's dataset: its test images (N, 3, H, W) uint8 row for row those of predictions.npz,
    and its training images, of which the page shows the failure cases' nearest."""
    ds = dataset_from_config(config, data_dir)
    check_test_set(run, pred, ds)
    return ds


#### What the page embeds

def rounded(x):
    return round(float(x), DIGITS)


def categories(probs, labels):
    """Each test image's 2x2 category (an index into CATEGORIES) from both models' predictions."""
    right = [p.argmax(1) == labels for p in probs]
    return np.select([~right[0] & right[1], right[0] & ~right[1], ~right[0] & ~right[1]], [0, 1, 2], 3)


def gallery_items(rows, probs, labels, indices, category, suspect_of, case_of):
    """One entry per thumbnail, in row order (its place in the sprite): row r, test index i, true
    class t, category g, both models' top-5 [[class, p], ...] (the first is the prediction), their
    p(true class) q, and where it is one, its place in the suspects (s) and the cases (x)."""
    tops = [np.argsort(-p[rows], axis=1, kind="stable")[:, :TOP_K] for p in probs]  # (n, 5) each
    items = []
    for k, r in enumerate(rows.tolist()):
        t = int(labels[r])
        items.append({"r": r, "i": int(indices[r]), "t": t, "g": int(category[r]),
                      "top": [[[int(c), rounded(p[r, c])] for c in top[k]] for p, top in zip(probs, tops)],
                      "q": [rounded(p[r, t]) for p in probs], "s": suspect_of.get(r), "x": case_of.get(r)})
    return items


def confusion(labels, probs, n_classes):
    """Per model, the confusion matrix [true][predicted] over every test image."""
    return [np.bincount(labels * n_classes + p.argmax(1), minlength=n_classes ** 2)
            .reshape(n_classes, n_classes).tolist() for p in probs]


def suspects(comparison):
    """comparison.json's listed label-error suspects, as the page shows them."""
    found = comparison["label_error_suspects"]  # null: compare.py found none to look for
    rows = (found["suspects"] or []) if found else []
    keys = ("row", "agreed", "baseline_confidence", "improved_confidence", "label_confidence")
    return {"count": found["count"] if found else 0, "rows": [{k: s[k] for k in keys} for s in rows]}


def png_uri(rgb, jpeg=False):
    ok, buf = cv2.imencode(".jpg" if jpeg else ".png", np.ascontiguousarray(rgb[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if jpeg else [])
    assert ok, "OpenCV could not encode the image"
    return f"data:image/{'jpeg' if jpeg else 'png'};base64,{base64.b64encode(buf).decode('ascii')}"


def sprite(images):
    """The thumbnails (N, 3, H, W) uint8 as one image, SPRITE_COLUMNS wide, row after row: (data URI,
    columns)."""
    n, cols = len(images), max(1, min(SPRITE_COLUMNS, len(images)))
    tiles = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    if tiles.shape[1:3] != (THUMB, THUMB):
        tiles = np.stack([cv2.resize(t, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for t in tiles])
    grid = np.zeros((max(1, -(-n // cols)) * cols, THUMB, THUMB, 3), np.uint8)
    grid[:n] = tiles
    sheet = grid.reshape(-1, cols, THUMB, THUMB, 3).transpose(0, 2, 1, 3, 4).reshape(-1, cols * THUMB, 3)
    uri = png_uri(sheet)
    return (uri if len(uri) * 3 / 4 <= PNG_BUDGET * max(n, 1) else png_uri(sheet, jpeg=True)), cols


def neighbour_rows(stated):
    """The training rows of every case's nearest training images, each once: their places in the
    neighbours' sprite."""
    return list(dict.fromkeys(r for c in stated["cases"] for r in c["evidence"]["neighbours"]["train_rows"]))


def cause_entry(stated, slot):
    """A case's stated cause as the page shows it: name, causes.py's sentence, and its nearest
    training images (n: place in the neighbours' sprite, t: label, s: cosine similarity)."""
    nb = stated["evidence"]["neighbours"]
    return {"cause": stated["cause"], "name": CAUSE_NAMES.get(stated["cause"], stated["cause"]),
            "sentence": stated["sentence"],
            "neighbours": [{"n": slot[r], "t": t, "s": s} for r, t, s in zip(nb["train_rows"], nb["labels"],
                                                                           nb["similarity"])]}


def case_entries(cases, explained, stated, maps_pred, maps_true, images, comparison):
    """The failure cases as the page shows them: hypothesis, evidence, stated cause, overlays,
    whether fixed."""
    fixed = {c["index"]: c["fixed"] for c in comparison["cases"] or []}
    slot = {r: k for k, r in enumerate(neighbour_rows(stated))}
    out = []
    for case, ex, why, m_pred, m_true in zip(cases, explained["cases"], stated["cases"], maps_pred, maps_true):
        image = images[case["row"]]
        ev = ex["evidence"]
        out.append({"index": case["index"], "row": case["row"], "hypothesis": ex["hypothesis"],
                    "source": ex["hypothesis_source"], "fixed": fixed.get(case["index"]),
                    "correlation": ev["pred_true_correlation"],
                    "evidence": {k: {s: ev[k][s] for s in ("centre_mass", "centre_mass_percentile",
                                                               "peak_in_box", "empty")} for k in ("pred", "true")},
                    "stated": cause_entry(why, slot),
                    "overlays": [png_uri(overlay(image, m, CAM_SIZE)) for m in (m_pred, m_true)]})
    return out


def headline(comparison, study, out):
    """The study's numbers and the relative links (from the page's folder) to its PDFs and figures."""
    keys = ("n_test", "accuracy_baseline", "accuracy_improved", "accuracy_difference", "bootstrap_ci95",
            "mcnemar_p", *CATEGORIES)
    here = out.resolve().parent

    def link(path):
        return Path(os.path.relpath(path.resolve(), here)).as_posix()
    figures = [(name, link(study / "compare" / f"{name}.png")) for name in comparison["figures"] or []]
    return {**{k: comparison[k] for k in keys}, "changed": comparison["changed_values"],
            "links": [(f"{name}.pdf", link(study / f"{name}.pdf")) for name in ("report", "supplement")],
            "figures": figures}


#### Command line

def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--study", required=True, help="study folder (runs/<study>) that make study wrote")
    p.add_argument("--out", default=None, help="the page to write (default: <study>/explorer.html)")
    p.add_argument("--all", action="store_true", help="every test image, not only those either model gets wrong")
    p.add_argument("--data-dir", default=None, help="override the runs' --data-dir (the test images)")
    return p


def render(data, sprite_uri):
    """The page: the template with the sprite and the JSON blob in place. '<' is escaped inside the
    blob so that no text in it (an analyst's hypothesis, a class name) can close its <script>."""
    blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
    page = TEMPLATE.read_text(encoding="utf-8")
    return page.replace("__EXPLORER_SPRITE__", sprite_uri).replace("__EXPLORER_DATA__", blob)


def run(args):
    study = Path(args.study)
    out = Path(args.out) if args.out else study / "explorer.html"
    if out.suffix != ".html" or out.is_dir():  # never a study's other files
        raise UserError(f"--out {out} is not an .html file name; give the page's, for example "
                        f"{study / 'explorer.html'}")
    runs, (config, _), preds = load_runs(study)
    comparison = checked(require(study / "compare" / "comparison.json"),
                         read_json(study / "compare" / "comparison.json", "comparison"))
    cases, explained, stated, maps_pred, maps_true = load_cases(runs[0], preds[0])
    ds = dataset(runs[0], config, preds[0], args.data_dir)
    images = ds.test_x
    labels, indices, probs = preds[0]["labels"], preds[0]["indices"], [p["probs"] for p in preds]
    category = categories(probs, labels)
    rows = np.arange(len(labels)) if args.all else np.flatnonzero(category != CATEGORIES.index("both_right"))
    found = suspects(comparison)
    suspect_of = {s["row"]: k for k, s in enumerate(found["rows"])}
    case_of = {c["row"]: k for k, c in enumerate(cases)}
    sprite_uri, cols = sprite(images[rows])
    near_uri, near_cols = sprite(ds.train_x[neighbour_rows(stated)])  # a few dozen: the cases' neighbours
    data = {"study": study.resolve().name, "models": [r.name for r in runs], "classes": config["classes"],
            "superclasses": config.get("superclasses"), "all": bool(args.all), "n_test": len(labels),
            "thumb": THUMB, "cols": cols, "categories": CATEGORIES, "headline": headline(comparison, study, out),
            "confusion": confusion(labels, probs, len(config["classes"])), "suspects": found,
            "layer": explained["layer"],
            "cases": case_entries(cases, explained, stated, maps_pred, maps_true, images, comparison),
            "neighbour_sprite": {"uri": near_uri, "cols": near_cols},
            "items": gallery_items(rows, probs, labels, indices, category, suspect_of, case_of),
            "commit": git_commit()}
    page = render(data, sprite_uri).encode("utf-8")
    atomic_write(out, lambda f: f.write(page))
    what = "every test image" if args.all else "the test images either model gets wrong"
    kind = sprite_uri[len("data:image/"):sprite_uri.index(";")]
    print(f"{out}: {len(rows):,} thumbnails ({what}, of {len(labels):,}), {len(page) / 1e6:.2f} MB "
          f"(of which the {kind} sprite {len(sprite_uri) / 1e6:.2f} MB)")
    return {"path": out, "bytes": len(page), "data": data}


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
