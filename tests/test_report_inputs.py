"""Every file the report build reads, damaged one key at a time: report.py and supplement.py stop
with one sentence naming the file and the script that writes it, never a traceback, and leave the
PDFs and LaTeX sources already there as they were. No LaTeX needed: the build stops before it.

The study is test_report.py's CIFAR-100-shaped one, with what make study, make seeds and make
ablation add (faithfulness, seeds, ablation, a corruption grid) and make planted's score, which both
builds are given (--planted-score).
"""
import ast
import json
import os
import re
import shutil
from pathlib import Path

import pytest

import compare
import report
import shapes
import supplement
import tex
from contract import WRITERS
from test_report import make_fake_study, planted_score

REPORT_DIR = Path(__file__).resolve().parent.parent / "report"
AUC = {"mean": 0.3, "std": 0.05}
FAITHFULNESS = {
    "checkpoint": "last", "layer": "layer4", "steps": 16, "deletion_baseline": "per-channel dataset mean",
    "insertion_start": "Gaussian blur", "sample": {
        "n": 200, "gradcam": {"deletion_auc": AUC, "insertion_auc": AUC},
        "random": {"deletion_auc": AUC, "insertion_auc": AUC},
        "gradcam_beats_random": {"deletion": 0.8, "insertion": 0.7}},
    "randomisation": {"n": 8, "stages": ["fc", "layer4"], "spearman_mean": [0.3, 0.1]}}
SPREAD = {"values": [0.6, 0.61], "mean": 0.605, "std": 0.007}
SEEDS = {"seeds": {"seeds": [42, 43], "improved_better": 2, "baseline": SPREAD, "improved": SPREAD,
                   "difference": SPREAD}}
ABLATION = {"ablation": [{"changed": {"cutmix_prob": 0.5}, "accuracy": 0.62, "difference": 0.02,
                          "mcnemar_p": 0.01, "corrected": 40, "worsened": 20}]}
CORRUPTIONS = {"severities": [1, 3, 5], "corruptions": ["fog"], "n": 1000,
               "mean_corruption_error": {"baseline": 0.5, "improved": 0.45},
               "per_corruption": [{"name": "fog", "baseline": 0.5, "improved": 0.55, "difference": 0.05}],
               "helps_most": ["fog"], "hurts_most": []}


@pytest.fixture(scope="module")
def full_study(tmp_path_factory):
    study = make_fake_study(tmp_path_factory.mktemp("inputs") / "resnet18-cifar100")
    for model in ("baseline", "improved"):
        (study / model / "faithfulness.json").write_text(json.dumps(FAITHFULNESS))
        shutil.copy(study / model / "curves.png", study / model / "faithfulness.png")
    for name, value in (("seeds", SEEDS), ("ablation", ABLATION)):
        (study / name).mkdir()
        (study / name / f"{name}.json").write_text(json.dumps(value))
    path = study / "compare" / "comparison.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), corruptions=CORRUPTIONS)))
    (study / "planted").mkdir()  # where make planted would leave it, beside the study here
    (study / "planted" / "score.json").write_text(json.dumps(planted_score()))
    return study


@pytest.fixture
def damaged(full_study, tmp_path):
    """A copy of the study with outputs of an earlier build in place (report.pdf, supplement.pdf,
    report/*.tex), which a refused build must leave as they were."""
    study = Path(shutil.copytree(full_study, tmp_path / full_study.name))
    (study / "report").mkdir()
    for rel in ("report.pdf", "supplement.pdf", "report/macros.tex", "report/supplement-body.tex"):
        (study / rel).write_bytes(f"earlier {rel}".encode())
    return study


def outputs(study):
    return {p: p.read_bytes() for p in [study / "report.pdf", study / "supplement.pdf",
                                        *sorted((study / "report").rglob("*"))]}


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def at(data, where):
    """The container and key of a dotted path such as cases.0.true_prob."""
    *parents, last = where.split(".")
    for key in parents:
        data = data[int(key) if isinstance(data, list) else key]
    return data, int(last) if isinstance(data, list) else last


def drop(where):
    def change(data):
        parent, key = at(data, where)
        del parent[key]
    return change


def put(where, value):
    def change(data):
        parent, key = at(data, where)
        parent[key] = value
    return change


BOTH = ("report", "supplement")
# The files only report.py reads; supplement.py reads the others too.
REPORT_ONLY = {"metrics.json", "gradcam.json"}
IMPORTED = {"weights": "elsewhere/best.pth", "found": "bare state_dict", "normalisation": "given"}
# (file, change, what the sentence says, the script it names)
CASES = [
    ("compare/comparison.json", drop("n_test"), "lacks n_test", "compare.py"),
    ("compare/comparison.json", put("accuracy_baseline", "0.6"),
     "holds a string as accuracy_baseline, where the report reads a number", "compare.py"),
    ("compare/comparison.json", drop("shares.corrected"), "lacks shares.corrected", "compare.py"),
    ("compare/comparison.json", put("high_confidence_errors", []),
     "holds an array of 0 items as high_confidence_errors, where the report reads an array of at least 1 item",
     "compare.py"),
    ("compare/comparison.json", drop("cases.0.improved_confidence"), "lacks cases[0].improved_confidence",
     "compare.py"),
    ("compare/comparison.json", drop("corruptions.per_corruption.0.name"),
     "lacks corruptions.per_corruption[0].name", "compare.py"),
    ("compare/comparison.json", drop("label_error_suspects.rule"), "lacks label_error_suspects.threshold",
     "compare.py"),
    ("baseline/config.json", drop("best_test_accuracy"), "lacks best_test_accuracy", "train.py"),
    ("baseline/config.json", put("num_classes", "100"),
     "holds a string as num_classes, where the report reads an integer", "train.py"),
    ("improved/config.json", drop("arch"), "lacks arch", "train.py"),  # contract.CONFIG_KEYS
    ("improved/config.json", put("imported", IMPORTED), "lacks imported.sha256", "evaluate.py --weights"),
    ("baseline/metrics.json", drop("top5_accuracy"), "lacks top5_accuracy", "evaluate.py"),
    ("improved/metrics.json", put("test_accuracy", None),
     "holds null as test_accuracy, where the report reads a number", "evaluate.py"),
    ("improved/metrics.json", drop("checkpoint"), "lacks checkpoint", "evaluate.py"),  # METRIC_KEYS
    ("baseline/failures.json", drop("cases.1.true_prob"), "lacks cases[1].true_prob", "failures.py"),
    ("baseline/failures.json", put("cases.0.confidence", "high"),
     "holds a string as cases[0].confidence, where the report reads a number", "failures.py"),
    ("baseline/failures.json", drop("cases.0.true_superclass"), "lacks cases[0].true_superclass",
     "failures.py"),
    ("baseline/failures.json", put("cases", []), "holds an array of 0 items as cases", "failures.py"),
    ("baseline/failures.json", drop("summary"), "lacks summary", "failures.py"),
    ("baseline/gradcam.json", drop("cases.2.hypothesis"), "lacks cases[2].hypothesis", "gradcam.py"),
    ("baseline/gradcam.json", put("cases.0.evidence.pred.centre_mass", "0.4"),
     "holds a string as cases[0].evidence.pred.centre_mass, where the report reads a number or null",
     "gradcam.py"),
    ("baseline/gradcam.json", put("reference.map_size", [4]),
     "holds an array of 1 item as reference.map_size, where the report reads an array of 2 items or null",
     "gradcam.py"),
    ("baseline/faithfulness.json", drop("sample.gradcam.deletion_auc.mean"),
     "lacks sample.gradcam.deletion_auc.mean", "faithfulness.py"),
    ("improved/faithfulness.json", put("randomisation.spearman_mean", ["high"]),
     "holds a string as randomisation.spearman_mean[0]", "faithfulness.py"),
    ("seeds/seeds.json", drop("seeds.difference"), "lacks seeds.difference", "compare.py"),
    ("seeds/seeds.json", put("seeds.baseline.mean", "0.6"), "holds a string as seeds.baseline.mean",
     "compare.py"),
    ("seeds/seeds.json", put("seeds.improved.values", [0.6]),
     "holds 1 item as seeds.improved.values for 2 seeds", "compare.py"),
    ("ablation/ablation.json", drop("ablation.0.accuracy"), "lacks ablation[0].accuracy", "compare.py"),
    ("ablation/ablation.json", put("ablation", {}),
     "holds an object as ablation, where the report reads an array", "compare.py"),
    ("baseline/causes.json", drop("cases.0.sentence"), "lacks cases[0].sentence", "causes.py"),
    ("baseline/causes.json", put("cases.1.evidence.interventions.flip.p_true", "low"),
     "holds a string as cases[1].evidence.interventions.flip.p_true, where the report reads a number", "causes.py"),
    ("baseline/causes.json", put("cases.3.evidence.neighbours.labels", None),
     "holds null as cases[3].evidence.neighbours.labels", "causes.py"),
    ("baseline/causes.json", put("thresholds", None), "holds null as thresholds", "causes.py"),
    # read_causes' own check, before the shape's: the cases must be failures.json's
    ("baseline/causes.json", put("cases.2.index", -1), "does not explain the cases of failures.json", "causes.py"),
    ("planted/score.json", drop("planted.recall.context"), "lacks planted.recall.context",
     "tools/score_causes.py (make planted)"),
    ("planted/score.json", put("control.rate", "0%"),
     "holds a string as control.rate, where the report reads a number or null", "tools/score_causes.py"),
    ("planted/score.json", drop("thresholds"), "lacks thresholds", "tools/score_causes.py"),
]


def build_args(study):
    """The build's command line, as the Makefile gives it: with make planted's score where it exists."""
    score = study / "planted" / "score.json"
    return ["--study", str(study)] + (["--planted-score", str(score)] if score.is_file() else [])


def refused(build, study):
    """The one-line message a build stops with (SystemExit: any other exception fails the test)."""
    with pytest.raises(SystemExit) as e:
        {"report": report, "supplement": supplement}[build].main(build_args(study))
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize("rel, change, says, writer", CASES, ids=[f"{c[0]}:{c[2][:40]}" for c in CASES])
def test_a_damaged_input_is_one_sentence_naming_its_writer(damaged, rel, change, says, writer):
    edit_json(damaged / rel, change)
    before = outputs(damaged)
    for build in ("report",) if Path(rel).name in REPORT_ONLY else BOTH:
        message = refused(build, damaged)
        assert str(damaged / rel) in message and says in message and writer in message, message
    assert outputs(damaged) == before


@pytest.mark.parametrize("rel, target", [("compare/comparison.json", "study"), ("seeds/seeds.json", "seeds")])
def test_the_fix_names_the_make_step_that_writes_the_file(damaged, rel, target):
    edit_json(damaged / rel, put("n_test" if target == "study" else "seeds.seeds", None))
    assert (f"write it again with compare.py (the compare step of make {target} "
            "STUDY=resnet18-cifar100)") in refused("report", damaged)


def test_history_without_a_column_the_recipe_checks_read_names_train_py(damaged, tmp_path):
    """history.csv is read by compare.py (judgements.fit_check), which stores the verdict in
    comparison.json: the report no longer reads it."""
    path = damaged / "baseline" / "history.csv"
    lines = path.read_text().splitlines()
    drop_at = lines[0].split(",").index("test_loss")
    path.write_text("".join(",".join(v for k, v in enumerate(line.split(",")) if k != drop_at) + "\n"
                            for line in lines))
    with pytest.raises(SystemExit) as e:
        compare.main(["--baseline", str(damaged / "baseline"), "--improved", str(damaged / "improved"),
                      "--out", str(tmp_path / "compare"), "--bootstrap", "10"])
    message = str(e.value.code)
    assert str(path) in message and "lacks test_loss" in message and "train.py" in message, message
    assert "\n" not in message and not (tmp_path / "compare" / "comparison.json").exists()
    assert "history.csv" not in {Path(rel).name for rel in report.INPUTS.values()}


def test_a_file_that_is_not_json_names_its_writer(damaged):
    path = damaged / "compare" / "comparison.json"
    path.write_text(path.read_text()[:100])  # truncated
    for build in BOTH:
        message = refused(build, damaged)
        assert str(path) in message and "not valid UTF-8 JSON" in message and "compare.py" in message


def test_every_kind_of_file_read_is_damaged_above():
    assert {Path(rel).name for rel, *_ in CASES} == set(shapes.FILE_SHAPES)


def test_the_valid_study_passes_every_check(full_study, tmp_path, monkeypatch):
    """The same study, undamaged, gets through every check of both builds (to the LaTeX step,
    made to fail here so that no LaTeX is needed)."""
    study = Path(shutil.copytree(full_study, tmp_path / full_study.name))
    _, _, data = report.load_study(study)
    assert data["seeds"] and data["ablation"] and data["faithfulness"]
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    for build in BOTH:
        assert "not found" in refused(build, study)


def test_each_file_the_report_reads_has_one_writer_in_the_contract():
    read = {Path(rel).name for rel in report.INPUTS.values()} | set(shapes.FILE_SHAPES)
    read |= {f"{stem}.pdf" for stem in report.OPTIONAL_FIGURES} | {"faithfulness.png"}
    assert read <= set(WRITERS), read - set(WRITERS)


@pytest.mark.parametrize("script", ["report", "supplement"])
def test_report_scripts_share_a_module_and_import_neither_other(script):
    tree = ast.parse((REPORT_DIR / f"{script}.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "study" in imported and not imported & {"report", "supplement"}


@pytest.mark.parametrize("value, shape, found", [
    ({"a": 1}, {"a": shapes.NUMBER, "b?": str}, None),  # "?": may be absent
    ({"a": None}, {"a": shapes.Nullable(shapes.NUMBER)}, None),
    ({"a": None}, {"a?": shapes.NUMBER}, ("a", None)),  # absent, not null
    ({"a": [1, "x"]}, {"a": shapes.ListOf(shapes.NUMBER)}, ("a[1]", "x")),
    ({"k": 1}, shapes.IfKey("k", {"k": shapes.ANY, "j": shapes.ANY}, {}), ("j", shapes.MISSING)),
    ({"s": {"x": {}}}, {"s": shapes.DictOf({"v": shapes.ANY})}, ("s.x.v", shapes.MISSING)),
])
def test_mismatch_finds_the_first_departure_from_a_shape(value, shape, found):
    got = shapes.mismatch(value, shape)
    assert (got if got is None else got[:2]) == found


@pytest.mark.parametrize("value, shape, expected", [
    ({"a": 1}, {"a": shapes.NUMBER, "b?": shapes.Nullable({"c?": shapes.ANY})}, {"a": 1, "b": None}),
    ({"b": {}}, {"b?": {"c?": shapes.ANY}}, {"b": {"c": None}}),  # nested: filled where present
    ({"l": [{}]}, {"l": shapes.ListOf({"x?": shapes.ANY})}, {"l": [{"x": None}]}),
    ({"k": 1, "z": 2}, shapes.IfKey("k", {"k": shapes.ANY, "j?": shapes.ANY}, {}), {"k": 1, "z": 2, "j": None}),
])
def test_filled_gives_each_absent_optional_key_its_null(value, shape, expected):
    assert shapes.mismatch(value, shape) is None and shapes.filled(value, shape) == expected


def test_a_writer_that_departs_from_its_files_shape_is_stopped_before_writing():
    with pytest.raises(AssertionError, match=r"seeds.json as written would hold nothing as seeds.difference"):
        shapes.conform({"seeds": {"seeds": [1], "improved_better": 1, "baseline": SPREAD, "improved": SPREAD}},
                       "seeds.json")
    assert shapes.conform(SEEDS, "seeds.json") is SEEDS


def test_the_supplement_gives_every_number_behind_each_stated_cause(full_study, tmp_path, monkeypatch):
    """Per case, the probabilities under each intervention and the neighbours' labels and
    similarities, as causes.json holds them; and make planted's whole table. The body is written
    before LaTeX runs, so none is needed."""
    study = Path(shutil.copytree(full_study, tmp_path / full_study.name))
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    assert "not found" in refused("supplement", study)
    body = (study / "report" / "supplement-body.tex").read_text()
    classes = json.loads((study / "baseline" / "config.json").read_text())["classes"]
    assert os.path.normpath(study / "baseline" / "causes.png") in {
        os.path.normpath(study / "report" / p) for p in re.findall(r"includegraphics\[[^]]*\]\{([^}]*)\}", body)}
    for case in json.loads((study / "baseline" / "causes.json").read_text())["cases"]:
        start = body.index(f"\\subsection*{{\\#{case['index']}:")
        part = body[start:body.index("\\subsection*", start + 1)]
        assert tex.tex_escape(case["sentence"].split(": ", 1)[1].replace("->", "→")) in part
        for name, probe in case["evidence"]["interventions"].items():
            assert f" & {probe['p_pred']:.3f} & {probe['p_true']:.3f} & " in part, name
        nb = case["evidence"]["neighbours"]
        for j, (label, similarity) in enumerate(zip(nb["labels"], nb["similarity"])):
            name = re.escape(tex.tex_escape(classes[label]))
            assert re.search(rf"\n{j + 1} & (\\textbf\{{{name}\}}|{name}) & {similarity:.3f} \\\\", part), (j, part)
    assert r"label error & 9 & 0 & 0 & 0 & 15 & 38 \\" in body and r"none & 0 & 13 & 0 & 8 & 9 & -- \\" in body
    assert r"look-alike 42\,\% of 36" in body


def test_the_score_shape_is_what_score_causes_writes():
    """shapes.SCORE against tools/score_causes.py's own output (which conform() checks on writing):
    every stated and planted cause, one never stated (precision null), one never planted (recall null)."""
    import judgements
    import score_causes
    cases = [{"cause": c, "confidence": 0.9} for c in ("label_error", "lookalike", "undecided", "fragile")]
    truths = ["label_error", "lookalike", "none", "none"]
    result = {"thresholds": judgements.CAUSE_THRESHOLDS, "planted": score_causes.score(cases, truths, 10),
              "control": score_causes.false_alarms(cases), "git_commit": None}
    assert result["planted"]["precision"]["context"]["all"] is None and result["planted"]["recall"]["context"] is None
    assert shapes.mismatch(result, shapes.SCORE) is None
    del result["control"]  # score_causes.py without --control
    assert shapes.mismatch(result, shapes.SCORE) is None
