"""causes.py and its rule (judgements.cause_of): the evidence per case, the stated cause, and the
proof on planted causes (make planted, scored by tools/score_causes.py)."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import causes
import hypotheses
import judgements
from hypotheses import cause_sentence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import score_causes  # noqa: E402


def test_the_marked_region_is_the_top_fifth_and_an_empty_map_marks_nothing():
    cam = torch.arange(100, dtype=torch.float32).view(10, 10)
    marked = causes.marked_region(cam)
    assert int(marked.sum()) == 20 and bool(marked[9].all()) and not marked[0].any()
    assert causes.marked_region(torch.zeros(10, 10)) is None


def test_a_shift_moves_the_image_and_fills_the_edge_with_the_mean():
    x = torch.arange(16, dtype=torch.float32).view(1, 4, 4) + 1
    right = causes.shifted(x, 0, 2)
    assert right[0, :, :2].eq(0).all() and torch.equal(right[0, :, 2:], x[0, :, :2])
    assert torch.equal(causes.shifted(right, 0, -2)[0, :, :2], x[0, :, :2])


def test_the_interventions_change_only_what_they_name():
    x = torch.randn(3, 32, 32)
    cam = torch.zeros(32, 32)
    cam[:8, :8] = 1  # marks the top-left corner
    v = causes.variants(x, cam, torch.zeros(32, 32))
    assert "keep_true_marked" not in v  # an empty true-class map marks nothing to keep
    marked = causes.marked_region(cam)
    assert torch.equal(v["remove_marked"][:, ~marked], x[:, ~marked])
    assert not torch.equal(v["remove_marked"][:, marked], x[:, marked])
    assert torch.equal(v["keep_marked"][:, marked], x[:, marked])
    assert torch.equal(v["flip"], x.flip(-1)) and set(judgements.SMALL_CHANGES) <= set(v)


def test_region_similarity_is_high_for_a_shared_background_and_none_for_no_region():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)
    other = torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)
    region = torch.ones(8, 8, dtype=torch.bool)
    assert causes.region_similarity(image, torch.stack([image, image]), region) == pytest.approx(1.0)
    assert abs(causes.region_similarity(image, other[None], region)) < 0.3
    assert causes.region_similarity(image, image[None], torch.zeros(8, 8, dtype=torch.bool)) is None


def evidence(pred_share=1.0, true_share=0.0, lift=1.0, pairs=5, moved=0, background=0.0, obj=0.0, typical=0.8):
    return {"neighbours": {"k": 10, "pred_share": pred_share, "true_share": true_share, "typicality": typical},
            "pair_errors": pairs, "pair_lift": lift, "moved_by_small_changes": moved, "map_correlation": 0.5,
            "neighbour_pixels": {"background": background, "object": obj}}


CASE = {"true_name": "cat", "pred_name": "dog", "true_prob": 0.001}
SEEN = {**CASE, "true_prob": 0.3}


@pytest.mark.parametrize("case, ev, cause", [
    (CASE, evidence(), "label_error"),
    (CASE, evidence(typical=0.2), "undecided"),  # an odd image the network pushed into the class
    (CASE, evidence(lift=4, pairs=2), "label_error"),  # two errors make no systematic pair
    (CASE, evidence(moved=3), "fragile"),
    (SEEN, evidence(lift=4, pred_share=0.4, true_share=0.4), "lookalike"),
    (SEEN, evidence(lift=4, background=0.9, obj=0.2), "context"),
    (SEEN, evidence(lift=4, background=0.9, obj=0.95), "lookalike"),  # the object is shared more
    (SEEN, evidence(lift=4, pred_share=0.3, true_share=0.1), "undecided"),
    (SEEN, evidence(), "undecided"),
])
def test_the_rule_states_the_one_cause_whose_conditions_all_hold(case, ev, cause):
    verdict = judgements.cause_of(case, ev)
    assert verdict["cause"] == cause
    sentence = cause_sentence(case, verdict, ev)
    assert sentence.startswith(f"{hypotheses.CAUSE_NAMES[cause]}: ")
    if cause == "fragile":  # hypotheses.py words the count of judgements.SMALL_CHANGES
        assert f"3 of {len(judgements.SMALL_CHANGES)} small changes" in sentence
    if cause == "undecided":  # says which cause came closest and what it lacked
        assert verdict["closest"]["met"] < verdict["closest"]["of"] and "closest to" in sentence
    held = [c for c, conds in verdict["conditions"].items() if all(conds.values())]
    assert held == ([] if cause == "undecided" else [cause])


def test_an_undecided_sentence_gives_the_numbers_of_what_failed():
    """"Say which and how strongly": each failed condition with the number it was decided on."""
    ev = evidence(typical=0.2)
    verdict = judgements.cause_of(CASE, ev)
    sentence = cause_sentence(CASE, verdict, ev)
    assert "closest to label error (5 of 6 conditions; not: a typical image of that class (typicality 0.20))" in sentence
    ev = evidence(lift=4, pred_share=0.3, true_share=0.1)
    sentence = cause_sentence(SEEN, judgements.cause_of(SEEN, ev), ev)
    assert "neighbours from the confused pair (40% of neighbours)" in sentence, sentence


def test_no_evidence_fits_two_causes_at_once():
    """The causes' conditions exclude each other (systematic or not, stable or not, background or
    not), so a stated cause is never a tie broken by the order of CAUSES."""
    rng = random.Random(0)
    for _ in range(2000):
        ev = evidence(pred_share=rng.random(), true_share=rng.random() / 2, lift=rng.uniform(0, 5),
                      pairs=rng.randint(1, 9), moved=rng.randint(0, 5), background=rng.uniform(-1, 1),
                      obj=rng.uniform(-1, 1), typical=rng.random())
        verdict = judgements.cause_of({**CASE, "true_prob": rng.choice((0.001, 0.3))}, ev)
        assert sum(all(c.values()) for c in verdict["conditions"].values()) <= 1


def test_causes_py_writes_evidence_and_a_cause_for_every_case(tiny_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = causes.main(["--run", str(run), "--device", "cpu", "--k", "5"])
    written = json.loads((run / "causes.json").read_text())
    cases = json.loads((run / "failures.json").read_text())["cases"]
    assert [c["index"] for c in written["cases"]] == [c["index"] for c in cases]
    for c in written["cases"]:
        assert c["cause"] in (*judgements.CAUSES, "undecided") and c["sentence"]
        nb = c["evidence"]["neighbours"]
        assert len(nb["train_rows"]) == 5 and nb["similarity"] == sorted(nb["similarity"], reverse=True)
        assert {"original", "flip", "remove_border"} <= set(c["evidence"]["interventions"])
        orig = c["evidence"]["interventions"]["original"]  # the model's own prediction, unchanged
        assert orig["top"] == c["pred"] and orig["p_pred"] == pytest.approx(c["confidence"], abs=1e-4)
    assert (run / "causes.png").stat().st_size > 0 and result["thresholds"] == judgements.CAUSE_THRESHOLDS


def test_causes_py_refuses_a_run_without_gradcam_and_too_many_neighbours(tiny_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with pytest.raises(SystemExit, match="^error: --k 100000 asks for more neighbours than the 640"):
        causes.main(["--run", str(run), "--device", "cpu", "--k", "100000"])
    (run / "gradcam.json").unlink()
    with pytest.raises(SystemExit, match="^error: .*gradcam.json does not exist; python gradcam.py"):
        causes.main(["--run", str(run), "--device", "cpu"])
    assert not (run / "causes.json").exists()  # nothing written on a refusal


# What the rule meets on the planted causes of three seeds and a wrong one fails, with a margin
# (docs/RESULTS.md: label-error precision 100% and recall 33-38%, context 100% and 41-86%,
# look-alike recall 92-100%, no false alarm on the controls).
PASS = {"label_error": 0.8, "context": 0.8}  # precision of each planted-only cause stated
RECALL = {"label_error": 0.2, "lookalike": 0.7, "context": 0.3}
MAX_FALSE_ALARMS = 0.1  # of the control's errors stated label error or context


def meets(result):
    s = result["planted"]
    return (all((s["precision"][c]["all"] or 0) >= p for c, p in PASS.items())
            and all((s["recall"][c] or 0) >= r for c, r in RECALL.items())
            and result["control"]["rate"] <= MAX_FALSE_ALARMS)


@pytest.fixture(scope="module")
def planted_study(tmp_path_factory):
    """make planted, as the README documents it, in a folder of its own (two SimpleCNNs, 12 epochs
    on 5,000 synthetic images each: about two minutes on 2 cores)."""
    root = tmp_path_factory.mktemp("planted")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(["make", "planted", f"PY={sys.executable}", f"RUNS_DIR={root / 'runs'}",
                           f"DATA_DIR={root / 'data'}", "DEVICE=cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return root / "runs" / "planted", done.stdout


def test_the_rule_finds_the_planted_causes_and_raises_few_false_alarms(planted_study):
    study, stdout = planted_study
    result = json.loads((study / "score.json").read_text())
    assert "| planted \\ stated |" in stdout  # the table is printed, as docs/RESULTS.md shows it
    s = result["planted"]
    assert sum(map(sum, (row.values() for row in s["table"].values()))) == \
        len(json.loads((study / "baseline" / "causes.json").read_text())["cases"])
    assert meets(result), score_causes.markdown(result)


def test_a_rule_that_states_causes_at_random_fails_the_same_thresholds(planted_study):
    """The thresholds can fail: the same stated causes dealt out at random among the cases (as
    many of each) miss them."""
    study, _ = planted_study
    rng = random.Random(0)
    shuffled = {}
    for side in ("baseline", "control"):
        cases = json.loads((study / side / "causes.json").read_text())["cases"]
        stated = [c["cause"] for c in cases]
        rng.shuffle(stated)
        shuffled[side] = [{**c, "cause": s} for c, s in zip(cases, stated)]
    planted = score_causes.dataset_from_config(score_causes.read_config(study / "baseline")).planted
    truths = [score_causes.planted_cause(c, planted) for c in shuffled["baseline"]]
    # the control's stated causes are the real ones: random dealing cannot change their counts
    result = {"planted": score_causes.score(shuffled["baseline"], truths, 10),
              "control": score_causes.false_alarms(shuffled["control"])}
    assert not meets(result)


def test_a_stale_causes_file_is_refused_by_its_loader(tiny_run, tmp_path):
    import shutil
    from contract import read_causes
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    causes.main(["--run", str(run), "--device", "cpu"])
    cases = json.loads((run / "failures.json").read_text())["cases"]
    assert [c["index"] for c in read_causes(run, cases)["cases"]] == [c["index"] for c in cases]
    with pytest.raises(Exception, match="causes.json does not explain the cases of failures.json"):
        read_causes(run, cases[:1])
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "weights_sha256": "0" * 64}))
    with pytest.raises(Exception, match="explains other weights than metrics.json's .*re-run python causes.py"):
        read_causes(run, cases)
