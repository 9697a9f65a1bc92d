"""explore.py, the study explorer: the data its page embeds, and the page itself in a real browser.

The study is conftest's tiny run, copied as baseline and improved, with predictions of its 60 test
images replaced by seeded ones (a one-epoch model predicts one class for everything, which would
leave three of the four categories empty), then failures.py, gradcam.py, causes.py and compare.py run
on them as make study runs them: a few seconds. The browser tests drive Debian's Chromium headless with
Playwright (pip install -r requirements-browser.txt; nothing is downloaded: the system's Chromium
is used) and open the page from disk. They skip, saying why, where either is missing, unless
REQUIRE_BROWSER=1 (CI) makes them fail instead.
"""
import base64
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import causes
import compare
import contract
import explore
import failures
import gradcam

CHROMIUMS = ("chromium", "chromium-browser", "google-chrome")
SHARED_MISTAKES = 4  # images both models give, confidently, the same wrong class: label-error suspects


def seeded_predictions(labels, accuracy, rng, shared):
    """Probabilities (N, 10) float32 that are right on about `accuracy` of the images, with spread
    confidences, and confidently the class `shared[r]` wherever it is given."""
    n = len(labels)
    target = np.where(rng.random(n) < accuracy, labels, (labels + rng.integers(1, 10, n)) % 10)
    target[shared >= 0] = shared[shared >= 0]
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), target] += rng.uniform(1.5, 5, n)
    logits[shared >= 0, shared[shared >= 0]] += 4
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs.astype(np.float32)


@pytest.fixture(scope="module")
def study(tiny_run, tmp_path_factory):
    """runs/<study>/ as make study leaves it: baseline (failure cases, Grad-CAM), improved, the
    comparison and the page, on conftest's tiny run with seeded predictions (see the docstring)."""
    root = tmp_path_factory.mktemp("explorer") / "tiny"
    rng = np.random.default_rng(0)
    labels = contract.read_predictions(tiny_run)["labels"]
    shared = np.full(len(labels), -1)
    shared[:SHARED_MISTAKES] = (labels[:SHARED_MISTAKES] + 5) % 10
    for role, accuracy in (("baseline", 0.5), ("improved", 0.6)):
        run = Path(shutil.copytree(tiny_run, root / role))
        pred = dict(contract.read_predictions(run))
        pred["probs"] = seeded_predictions(labels, accuracy, rng, shared)
        np.savez_compressed(run / "predictions.npz", **pred)
    config = json.loads((root / "improved" / "config.json").read_text())
    (root / "improved" / "config.json").write_text(json.dumps(dict(config, cutmix_prob=0.5, label_smoothing=0.1)))
    failures.main(["--run", str(root / "baseline"), "--num-cases", "3"])
    gradcam.main(["--run", str(root / "baseline"), "--device", "cpu"])
    causes.main(["--run", str(root / "baseline"), "--device", "cpu"])
    compare.main(["--baseline", str(root / "baseline"), "--improved", str(root / "improved"), "--cases",
                  str(root / "baseline" / "failures.json"), "--out", str(root / "compare"), "--bootstrap", "100",
                  "--device", "cpu"])
    explore.main(["--study", str(root)])
    return root


def truth(study):
    """What the page should show, from the files themselves: labels, indices, both models'
    probabilities and predictions, the rows either model gets wrong, and comparison.json."""
    b, i = (contract.read_predictions(study / r) for r in ("baseline", "improved"))
    pb, pi = b["probs"].argmax(1), i["probs"].argmax(1)
    return {"labels": b["labels"], "indices": b["indices"], "probs": (b["probs"], i["probs"]), "pred": (pb, pi),
            "wrong": np.flatnonzero((pb != b["labels"]) | (pi != b["labels"])),
            "comparison": json.loads((study / "compare" / "comparison.json").read_text()),
            "classes": json.loads((study / "baseline" / "config.json").read_text())["classes"]}


def embedded(page_path):
    """The JSON blob of a written page, as the browser's JSON.parse reads it."""
    html = page_path.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S).group(1))


def copy_study(study, dest):
    return Path(shutil.copytree(study, dest, ignore=shutil.ignore_patterns("*.pt", "*.html")))


#### The data the page embeds

def test_the_gallery_holds_exactly_the_images_either_model_gets_wrong(study, capsys):
    result = explore.main(["--study", str(study), "--out", str(study / "again.html")])
    t, items = truth(study), result["data"]["items"]
    assert [it["r"] for it in items] == t["wrong"].tolist() and len(t["wrong"]) > 0
    assert [it["i"] for it in items] == t["indices"][t["wrong"]].tolist()
    assert re.search(r"again\.html: \d+ thumbnails .*, \d+\.\d\d MB", capsys.readouterr().out)
    assert embedded(study / "explorer.html") == embedded(study / "again.html") == json.loads(json.dumps(result["data"]))


def test_categories_and_predictions_are_those_of_the_predictions(study):
    t, data = truth(study), embedded(study / "explorer.html")
    labels, cmp = t["labels"], t["comparison"]
    for it in data["items"]:
        r, right = it["r"], [p[it["r"]] == labels[it["r"]] for p in t["pred"]]
        expected = {(False, True): "corrected", (True, False): "worsened", (False, False): "both_wrong"}[tuple(right)]
        assert data["categories"][it["g"]] == expected and it["t"] == labels[r]
        for m, probs in enumerate(t["probs"]):
            order = np.argsort(-probs[r], kind="stable")[:5]
            assert [c for c, _ in it["top"][m]] == order.tolist() and it["top"][m][0][0] == t["pred"][m][r]
            assert [p for _, p in it["top"][m]] == [round(float(probs[r, c]), 4) for c in order]
            assert it["q"][m] == round(float(probs[r, labels[r]]), 4)
    counts = [sum(it["g"] == g for it in data["items"]) for g in range(3)]
    assert counts == [cmp["corrected"], cmp["worsened"], cmp["both_wrong"]]  # compare.py's own 2x2
    assert min(counts) > 0 and cmp["both_right"] > 0
    listed = [s["row"] for s in cmp["label_error_suspects"]["suspects"]]
    assert set(range(SHARED_MISTAKES)) <= set(listed)
    assert {it["r"]: it["s"] for it in data["items"] if it["s"] is not None} == {r: k for k, r in enumerate(listed)}
    assert data["headline"]["mcnemar_p"] == cmp["mcnemar_p"]
    assert data["confusion"][0] == [[int(((labels == a) & (t["pred"][0] == b)).sum()) for b in range(10)]
                                    for a in range(10)]


def decoded(uri):
    """A data URI's image as an RGB array."""
    raw = np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8)
    return cv2.imdecode(raw, cv2.IMREAD_COLOR)[..., ::-1]


def train_images(study):
    config = json.loads((study / "baseline" / "config.json").read_text())
    return contract.dataset_from_config(config).train_x


def test_cases_carry_their_stated_cause_and_nearest_training_images(study):
    data = embedded(study / "explorer.html")
    stated = json.loads((study / "baseline" / "causes.json").read_text())["cases"]
    sheet, cols, train = decoded(data["neighbour_sprite"]["uri"]), data["neighbour_sprite"]["cols"], train_images(study)
    for case, why in zip(data["cases"], stated):
        got, nb = case["stated"], why["evidence"]["neighbours"]
        assert (got["cause"], got["sentence"]) == (why["cause"], why["sentence"]) and got["name"]
        assert [(n["t"], n["s"]) for n in got["neighbours"]] == list(zip(nb["labels"], nb["similarity"]))
        for n, row in zip(got["neighbours"], nb["train_rows"]):  # its tile is that training image
            y, x = divmod(n["n"], cols)
            tile = sheet[32 * y:32 * y + 32, 32 * x:32 * x + 32].astype(int)
            assert np.abs(tile - train[row].permute(1, 2, 0).numpy()).mean() < 20, (n, row)
    # each training image once: the sprite holds no more tiles than distinct neighbours
    assert len({n["n"] for c in data["cases"] for n in c["stated"]["neighbours"]}) == len(
        {r for c in stated for r in c["evidence"]["neighbours"]["train_rows"]})


def test_cases_carry_their_hypothesis_and_both_overlays(study):
    data = embedded(study / "explorer.html")
    explained = json.loads((study / "baseline" / "gradcam.json").read_text())["cases"]
    assert [c["index"] for c in data["cases"]] == [c["index"] for c in explained]
    assert [c["hypothesis"] for c in data["cases"]] == [c["hypothesis"] for c in explained]
    by_row = {it["r"]: it for it in data["items"]}
    for k, case in enumerate(data["cases"]):
        assert by_row[case["row"]]["x"] == k  # a case is an error of the baseline: always in the gallery
        for uri in case["overlays"]:
            assert decoded(uri).shape == (128, 128, 3)
    assert sum(it["x"] is not None for it in data["items"]) == len(data["cases"])


def test_all_gives_every_test_image(study, tmp_path):
    t = truth(study)
    data = explore.main(["--study", str(study), "--all", "--out", str(tmp_path / "all.html")])["data"]
    assert [it["r"] for it in data["items"]] == list(range(len(t["labels"])))
    assert sum(data["categories"][it["g"]] == "both_right" for it in data["items"]) == t["comparison"]["both_right"]
    assert data["all"] is True


def test_the_page_fetches_nothing_and_links_relatively(study):
    html = (study / "explorer.html").read_text(encoding="utf-8")
    remote = r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//"""
    assert not re.search(remote + r"|fetch\(|XMLHttpRequest|import\(", html)
    # the gallery's sprite, the neighbours' sprite and two overlays per case
    assert html.count("data:image/") == 2 + 2 * len(embedded(study / "explorer.html")["cases"])
    assert embedded(study / "explorer.html")["headline"]["links"] == [["report.pdf", "report.pdf"],
                                                                      ["supplement.pdf", "supplement.pdf"]]


@pytest.mark.parametrize("damage, message", [
    (None, "study folder {study} does not exist; make study"),
    ("compare/comparison.json", "comparison.json is missing; compare.py writes it"),
    ("baseline/gradcam.json", "gradcam.json is missing; gradcam.py writes it"),
    ("baseline/causes.json", "causes.json is missing; causes.py writes it"),
    ("improved/predictions.npz", "predictions.npz does not exist; run python evaluate.py"),
])
def test_a_bad_study_is_one_sentence_and_writes_nothing(study, tmp_path, damage, message):
    target = tmp_path / "nope"
    if damage:
        target = copy_study(study, tmp_path / "copy")
        (target / damage).unlink()
    with pytest.raises(SystemExit) as exc:
        explore.main(["--study", str(target)])
    text = exc.value.code
    assert isinstance(text, str) and text.startswith("error: ") and "\n" not in text
    assert message.format(study=target) in text
    assert not (target / "explorer.html").exists()


def test_out_must_be_a_page(study, tmp_path):
    with pytest.raises(SystemExit, match="is not an .html file name"):
        explore.main(["--study", str(study), "--out", str(study / "baseline" / "config.json")])
    assert json.loads((study / "baseline" / "config.json").read_text())["classes"]


#### The page in a real browser

def chromium():
    found = [shutil.which(name) for name in (os.environ.get("CHROMIUM"), *CHROMIUMS) if name]
    return next((path for path in found if path), None)


@pytest.fixture(scope="module")
def browser():
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "Playwright is not installed (pip install -r requirements-browser.txt)"
    else:
        if chromium() is None:
            reason = "no Chromium found (apt-get install chromium, or set CHROMIUM)"
    if reason:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium())  # the system's, never a download
        yield launched
        launched.close()


def open_page(browser, path):
    """The page from disk, with every console error and uncaught exception collected."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    return page


@pytest.fixture
def page(browser, study):
    page = open_page(browser, study / "explorer.html")
    yield page
    page.close()


def shown(page):
    """(count the page states, rows of the thumbnails drawn, in order)."""
    rows = page.eval_on_selector_all("#gallery .item", "items => items.map(e => +e.dataset.row)")
    return int(page.get_attribute("#count", "data-count")), rows


def test_the_page_loads_without_errors_and_shows_every_error(page, study):
    t = truth(study)
    count, rows = shown(page)
    assert page.errors == []
    assert count == len(rows) == len(t["wrong"]) and sorted(rows) == t["wrong"].tolist()
    assert page.text_content("#count").startswith(f"{len(t['wrong'])} of {len(t['wrong'])} images shown")
    assert "McNemar p" in page.text_content("#headline")


def test_a_filter_and_a_sort_show_what_they_should(page, study):
    t, data = truth(study), embedded(study / "explorer.html")
    items = data["items"]
    # At first the baseline's surest errors first: its p(true class), lowest first, ties in row order.
    assert shown(page)[1] == [it["r"] for it in sorted(items, key=lambda it: (it["q"][0], it["r"]))]
    pick = "worsened"
    page.select_option("#f-cat", str(data["categories"].index(pick)))
    want = [it for it in items if data["categories"][it["g"]] == pick]
    count, rows = shown(page)
    assert count == len(rows) == t["comparison"][pick] and sorted(rows) == sorted(it["r"] for it in want)
    page.select_option("#sort", "conf")
    assert shown(page)[1] == [it["r"] for it in sorted(want, key=lambda it: (-it["top"][0][0][1], it["r"]))]
    page.select_option("#sort", "drop")  # the improved model's p(true) minus the baseline's, lowest first
    assert shown(page)[1] == [it["r"] for it in sorted(want, key=lambda it: (it["q"][1] - it["q"][0], it["r"]))]
    page.fill("#f-min", "0.2")
    page.select_option("#model", "1")  # the confidence range now reads the improved model's
    assert shown(page)[1] == [it["r"] for it in sorted(want, key=lambda it: (it["q"][1] - it["q"][0], it["r"]))
                              if it["top"][1][0][1] >= 0.2]
    page.click("#reset")
    assert shown(page)[0] == len(items)
    page.check("#f-suspect")
    suspects = [x["row"] for x in t["comparison"]["label_error_suspects"]["suspects"]]
    assert sorted(shown(page)[1]) == sorted(suspects) and page.errors == []


def test_a_confusion_matrix_cell_shows_exactly_its_images(page, study):
    t = truth(study)
    labels, pred = t["labels"], t["pred"][0]
    off = [(int(((labels == a) & (pred == b)).sum()), a, b) for a in range(10) for b in range(10) if a != b]
    n, a, b = max(off)
    page.click(f'#cm td[data-true="{a}"][data-pred="{b}"]')
    count, rows = shown(page)
    assert count == n == len(rows) and sorted(rows) == np.flatnonzero((labels == a) & (pred == b)).tolist()
    assert page.get_attribute(f'#cm td[data-true="{a}"][data-pred="{b}"]', "data-count") == str(n)
    a = int(np.bincount(labels[pred == labels], minlength=10).argmax())  # a diagonal cell: the baseline's
    page.click(f'#cm td[data-true="{a}"][data-pred="{a}"]')              # right ones that the improved model gets wrong
    want = np.flatnonzero((labels == a) & (pred == a) & (t["pred"][1] != labels)).tolist()
    assert sorted(shown(page)[1]) == want
    page.select_option("#model", "1")  # the improved model's matrix: its predictions
    pred = t["pred"][1]
    n, a, b = max((int(((labels == a) & (pred == b)).sum()), a, b) for a in range(10) for b in range(10) if a != b)
    page.click(f'#cm td[data-true="{a}"][data-pred="{b}"]')
    assert sorted(shown(page)[1]) == np.flatnonzero((labels == a) & (pred == b)).tolist() and page.errors == []


def test_a_thumbnail_shows_its_image_and_labels_and_opens_its_detail(page, study):
    t = truth(study)
    config = json.loads((study / "baseline" / "config.json").read_text())
    images = contract.dataset_from_config(config).test_x
    case = json.loads((study / "baseline" / "failures.json").read_text())["cases"][0]
    for r in (int(t["wrong"][0]), int(t["wrong"][-1]), case["row"]):
        item = f'#gallery .item[data-row="{r}"]'
        assert page.text_content(f"{item} .lab.true") == t["classes"][t["labels"][r]]
        for m, letter in enumerate("BI"):
            got = re.fullmatch(rf"{letter}: (.+) (\d\.\d\d)", page.text_content(f"{item} .lab.m{m}"))
            assert got.group(1) == t["classes"][t["pred"][m][r]]
            assert abs(float(got.group(2)) - t["probs"][m][r].max()) <= 0.0051
        # What the screen shows there (64x64: 2x, pixelated) against the test image: a JPEG sprite of
        # this noisy synthetic clutter differs by about 10 on average, another image by about 40.
        page.locator(f"{item} .th").scroll_into_view_if_needed()
        box = page.locator(f"{item} .th").bounding_box()
        shot = page.screenshot(clip={"x": round(box["x"]), "y": round(box["y"]), "width": 64, "height": 64})
        drawn = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR).astype(int)
        expected = np.repeat(np.repeat(images[r].permute(1, 2, 0).numpy()[..., ::-1], 2, 0), 2, 1)
        assert box["width"] == box["height"] == 64 and np.abs(drawn - expected).mean() < 20
    page.click(f'#gallery .item[data-row="{case["row"]}"]')
    panel = page.text_content("#panel")
    explained = json.loads((study / "baseline" / "gradcam.json").read_text())["cases"][0]
    assert f"Test image #{case['index']}" in panel and explained["hypothesis"] in panel
    assert page.locator("#panel figure img").count() == 2
    check_stated_cause(page, study)
    page.keyboard.press("Escape")
    other = next(int(r) for r in t["wrong"] if r not in {c["row"] for c in t["comparison"]["cases"]})
    page.click(f'#gallery .item[data-row="{other}"]')
    assert "No Grad-CAM maps for this image" in page.text_content("#panel") and page.errors == []


def check_stated_cause(page, study):
    """The open detail of the first failure case: its stated cause, causes.py's sentence and its
    nearest training images, each drawn as that image with its label and similarity."""
    t, why = truth(study), json.loads((study / "baseline" / "causes.json").read_text())["cases"][0]
    box = page.locator("#panel .box.cause")
    assert box.get_attribute("data-cause") == why["cause"] and why["sentence"] in box.text_content()
    nb, train = why["evidence"]["neighbours"], train_images(study)
    captions = page.eval_on_selector_all("#panel .near figcaption", "e => e.map(x => x.innerText)")
    assert captions == [f"{t['classes'][c]}\n{s:.2f}" for c, s in zip(nb["labels"], nb["similarity"])]
    bold = page.eval_on_selector_all("#panel .near figcaption b", "e => e.map(x => x.textContent)")
    assert bold == [t["classes"][c] for c in nb["labels"] if c == why["pred"]]
    for j in (0, nb["k"] - 1):
        thumb = page.locator("#panel .near figure .th").nth(j)
        thumb.scroll_into_view_if_needed()
        b = thumb.bounding_box()
        shot = page.screenshot(clip={"x": round(b["x"]), "y": round(b["y"]), "width": 64, "height": 64})
        drawn = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR).astype(int)
        expected = np.repeat(np.repeat(train[nb["train_rows"][j]].permute(1, 2, 0).numpy()[..., ::-1], 2, 0), 2, 1)
        assert b["width"] == b["height"] == 64 and np.abs(drawn - expected).mean() < 20


def test_hostile_names_stay_text_and_superclasses_filter(browser, study, tmp_path):
    """A class name that tries to end the data's <script> and add an element, and CIFAR-100-style
    superclasses (here made up: every other class in one of two)."""
    copy = copy_study(study, tmp_path / "odd")
    hostile = '</script><img src=x onerror="document.title=1">&amp;'
    for run in ("baseline", "improved"):
        path = copy / run / "config.json"
        config = json.loads(path.read_text())
        config["classes"][0] = hostile
        config["superclasses"] = [f"group{c % 2}" for c in range(10)]
        path.write_text(json.dumps(config))
    explore.main(["--study", str(copy)])
    page = open_page(browser, copy / "explorer.html")
    assert page.errors == [] and page.locator("img[src=x]").count() == 0
    assert hostile in page.eval_on_selector_all("#f-true option", "e => e.map(x => x.textContent)")
    page.select_option("#f-super", "group1")
    t = truth(copy)
    assert sorted(shown(page)[1]) == [int(r) for r in t["wrong"] if t["labels"][r] % 2 == 1]
    page.close()
