"""What report.py and supplement.py share: the study's files, found, read and checked, and the
LaTeX build that turns sources into a PDF. Neither report script imports the other; both import this.

Every JSON file the report build reads is read through contract.py (read_json, or the run-folder
loader of its kind) and checked against READ_KEYS, the keys that report.py, prose.py and
supplement.py read from its kind of file, before anything is written: a damaged or partial study
stops with one sentence naming the file and the script that writes it (contract.WRITERS), never
with a traceback from deep inside a sentence.
"""
import csv
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common import UserError, atomic_write
from contract import WRITERS, read_config, read_gradcam, read_json, read_metrics

STUDIES = ("resnet18-cifar100", "simplecnn-cifar10", "smoke")  # the Makefile's STUDY values
MAKE_TARGETS = {"seeds.json": "seeds", "ablation.json": "ablation"}  # every other file: make study
LATEX_PACKAGES = "texlive-latex-base texlive-latex-recommended texlive-fonts-recommended latexmk"
SIDES = ("baseline", "improved")


#### Shapes: what a key must hold for the report to read it

NUMBER = (int, float)
FLAG = (bool, int)
ANY = object  # a value the report only prints (str() or tex_escape): any JSON value, null too


@dataclass(frozen=True)
class ListOf:
    """A JSON array whose items all have the shape `item`: exactly `length` of them, or at least
    `min_len` (the report indexes them)."""
    item: object
    min_len: int = 0
    length: int = None


@dataclass(frozen=True)
class DictOf:
    """A JSON object whose keys are data (setting names, thresholds) and whose values share a shape,
    but for the keys in `known`, which have their own."""
    value: object
    known: dict = None


@dataclass(frozen=True)
class Nullable:
    """`shape`, or null (the report reads such a key with `or` or an `is None` test)."""
    shape: object


@dataclass(frozen=True)
class IfKey:
    """An object whose keys depend on whether it holds `key` (the report tests `key in obj`):
    those of `then` if it does, else those of `otherwise`."""
    key: str
    then: dict
    otherwise: dict


def both(shape):
    return {side: shape for side in SIDES}


#### The keys the report build reads, per kind of file
# A plain key is required; "key?" may be absent (a later version added it, or it belongs to an
# optional part); Nullable(...) may be null. Types are given where another type would crash the
# build; ANY marks what is only printed.

# comparison.json (compare.py): report.py's macros and tables, prose.py, supplement.py's sections.
TWO_BY_TWO = ("corrected", "worsened", "both_wrong", "both_right")
RECHECKED_CASE = {"index": int, "fixed": FLAG, "true_name": ANY, "improved_pred_name": ANY,
                  "improved_confidence": NUMBER}
CORRUPTIONS = {"severities": ListOf(NUMBER), "corruptions": ListOf(ANY), "n": ANY,
               "mean_corruption_error": both(NUMBER),
               "per_corruption": ListOf({"name": str, **both(NUMBER), "difference": NUMBER}),
               "helps_most?": Nullable(ListOf(str)), "hurts_most?": Nullable(ListOf(str)), "source?": ANY}
SUSPECTS = {"count": ANY, "share": NUMBER, "figure?": ANY}
THRESHOLD_RANGE = {"min": NUMBER, "max": NUMBER}  # of each model's per-class thresholds
COMPARISON = {
    "n_test": NUMBER, "accuracy_baseline": NUMBER, "accuracy_improved": NUMBER,
    "accuracy_difference": NUMBER, "bootstrap_ci95": ListOf(NUMBER, length=2),
    "bootstrap": {"resamples": ANY}, "mcnemar_p": NUMBER,
    **dict.fromkeys(TWO_BY_TWO, NUMBER), "shares": dict.fromkeys(TWO_BY_TWO, NUMBER),
    "high_confidence_errors": ListOf({"threshold": NUMBER, **both(NUMBER),
                                      "relative_reduction": Nullable(NUMBER)}, min_len=1),
    "per_class": ListOf({"n": ANY, "change": NUMBER}),
    "top_gains": ListOf({"name": ANY, "change": NUMBER}), "top_losses": ListOf({"name": ANY, "change": NUMBER}),
    "changed_settings": ListOf(str),
    # prose.py names the improvement with the numbers of these two settings
    "changed_values": DictOf(both(ANY), known=dict.fromkeys(("cutmix_prob", "label_smoothing"),
                                                           both(Nullable(NUMBER)))),
    "cases": Nullable(ListOf(RECHECKED_CASE)),  # null until compare.py is given the failure cases
    "figures?": ListOf(str), "gradcam_layer?": ANY, "git_commit?": ANY,
    "confidence?": Nullable({f"{side}?": Nullable({"correct?": {"mean?": Nullable(NUMBER)}})
                             for side in SIDES}),
    "calibration?": Nullable(both({"ece": NUMBER, "nll": NUMBER, "brier": NUMBER})),
    "corruptions?": Nullable(CORRUPTIONS),  # null without both runs' corruptions.json
    # A comparison.json written before the confident-learning rule has one fixed threshold instead.
    "label_error_suspects?": Nullable(IfKey("rule", {**SUSPECTS, "rule": both(THRESHOLD_RANGE)},
                                            {**SUSPECTS, "threshold": NUMBER})),
}

# config.json (train.py; evaluate.py --weights for an imported model), beyond contract.CONFIG_KEYS.
CONFIG = {"arch": str, "dataset": ANY, "num_classes": int, "n_train": ANY, "n_test": ANY,
          # of the training settings, those whose values the configuration table looks up or joins
          "augment?": Nullable(str), "milestones?": Nullable(ListOf(ANY)),
          "wall_seconds?": Nullable(NUMBER), "resumed?": Nullable(ListOf({"after_epoch": ANY}))}
TRAINED = {"epochs": ANY, "best_epoch": ANY, "best_test_accuracy": NUMBER, "final_test_accuracy": NUMBER,
           "train_images_per_second?": NUMBER}  # the training record, which an imported model lacks
IMPORTED = {"imported": {"weights": str, "sha256": str, "found": ANY, "normalisation": ANY}}

# metrics.json (evaluate.py), beyond contract.METRIC_KEYS.
METRICS = {"test_accuracy": NUMBER, "top5_accuracy": NUMBER, "checkpoint": str, "ece": NUMBER, "epoch?": ANY}

# failures.json (failures.py) of the baseline; superclasses only for a dataset that has them.
FAILURE_CASE = {"index": int, "true_name": ANY, "pred_name": ANY, "confidence": NUMBER, "true_prob": NUMBER,
                "true_rank": ANY}
ERRORS = {"n_errors": ANY, "n_test": ANY, "errors_at_confidence": DictOf(ANY),
          "confused_pairs?": Nullable(ListOf({"true_name": ANY, "pred_name": ANY, "count": ANY}))}
FAILURES = {
    "cases": ListOf(IfKey("same_superclass", {**FAILURE_CASE, "true_superclass": ANY, "pred_superclass": ANY},
                          FAILURE_CASE), min_len=1),
    "selection?": Nullable({"source?": ANY, "rule?": ANY, "note?": ANY}),
    "summary": IfKey("share_within_superclass", {**ERRORS, "share_within_superclass": Nullable(NUMBER),
                                                 "errors_within_superclass": ANY}, ERRORS),
}

# gradcam.json (gradcam.py) of the baseline, beyond what contract.read_gradcam checks (its cases
# are failures.json's, for metrics.json's weights).
MAP_STATS = {"empty?": ANY, "centre_mass?": Nullable(NUMBER), "peak_in_box?": ANY}
REFERENCE = {"n": ANY, "empty_share": NUMBER, "centre_mass_quartiles?": Nullable(ListOf(NUMBER, min_len=3)),
             "peak_in_box_rate?": Nullable(NUMBER)}
GRADCAM = {
    "cases": ListOf({"evidence": {"pred": MAP_STATS, "true": MAP_STATS,
                                  "pred_true_correlation?": Nullable(NUMBER)},
                     "hypothesis": ANY, "hypothesis_source": ANY}),
    # the map and image sizes: added by a later gradcam.py, together
    "reference?": Nullable(IfKey("map_size", {**REFERENCE, "map_size": Nullable(ListOf(NUMBER, length=2)),
                                              "image_size": ListOf(NUMBER, length=2)},
                                 REFERENCE)),
}

# faithfulness.json (faithfulness.py) of each model: supplement.py's section, prose.py's sanity check.
AUCS = {"deletion_auc": {"mean": NUMBER, "std": NUMBER}, "insertion_auc": {"mean": NUMBER, "std": NUMBER}}
FAITHFULNESS = {"checkpoint": ANY, "layer": ANY, "steps": ANY, "deletion_baseline": ANY,
                "insertion_start": ANY,
                "sample": {"n": ANY, "gradcam": AUCS, "random": AUCS,
                           "gradcam_beats_random": {"deletion": NUMBER, "insertion": NUMBER}},
                "randomisation": {"n": ANY, "stages": ListOf(ANY, min_len=1),
                                  "spearman_mean": ListOf(Nullable(NUMBER))}}

# seeds.json and ablation.json (compare.py --seeds, --ablation): only when make seeds / make ablation ran.
SPREAD = {"values": ListOf(NUMBER), "mean": NUMBER, "std": Nullable(NUMBER)}  # std: null for one seed
SEEDS = {"seeds": {"seeds": ListOf(ANY), "improved_better": ANY, **both(SPREAD), "difference": SPREAD}}
ABLATION = {"ablation": ListOf({"changed": DictOf(ANY), "accuracy": NUMBER, "difference": NUMBER,
                                "mcnemar_p": NUMBER, "corrected": ANY, "worsened": ANY})}

# Each kind of JSON file by its name, as in contract.WRITERS. corruptions.json is not read: the
# report's corruption numbers are compare.py's, in comparison.json.
READ_KEYS = {"comparison.json": COMPARISON,
             "config.json": IfKey("imported", {**CONFIG, **IMPORTED}, {**CONFIG, **TRAINED}),
             "metrics.json": METRICS, "failures.json": FAILURES, "gradcam.json": GRADCAM,
             "faithfulness.json": FAITHFULNESS, "seeds.json": SEEDS, "ablation.json": ABLATION}
HISTORY_COLUMNS = ("epoch", "train_acc", "test_loss")  # history.csv: prose.py's over-fitting check


#### Checking a file against its kind's keys

MISSING = object()  # what mismatch() finds where a required key is absent


def mismatch(value, shape, where=""):
    """The first place where `value` departs from `shape`: (where, what it holds there or MISSING,
    the shape the report reads there), or None if it fits."""
    if isinstance(shape, Nullable):
        found = None if value is None else mismatch(value, shape.shape, where)
        return (where, value, shape) if found and found[0] == where else found  # "... or null"
    if isinstance(shape, IfKey):
        shape = shape.then if isinstance(value, dict) and shape.key in value else shape.otherwise
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return where, value, shape
        return _first(_key_mismatch(value, key, sub, where) for key, sub in shape.items())
    if isinstance(shape, DictOf):
        if not isinstance(value, dict):
            return where, value, shape
        known = shape.known or {}
        return _first(mismatch(v, known.get(k, shape.value), f"{where}.{k}") for k, v in value.items())
    if isinstance(shape, ListOf):
        if not (isinstance(value, list) and len(value) >= shape.min_len and shape.length in (None, len(value))):
            return where, value, shape
        return _first(mismatch(v, shape.item, f"{where}[{i}]") for i, v in enumerate(value))
    return None if isinstance(value, shape) else (where, value, shape)


def _key_mismatch(obj, key, shape, where):
    name = key.removesuffix("?")
    path = f"{where}.{name}" if where else name
    if name not in obj:
        return None if key.endswith("?") else (path, MISSING, shape)
    return mismatch(obj[name], shape, path)


def _first(mismatches):
    return next((m for m in mismatches if m), None)


def _items(n):
    return f"{n} item" + ("" if n == 1 else "s")


def shape_words(shape):
    """A shape as an error message names it: 'a number', 'an array of 2 items', ..."""
    if isinstance(shape, Nullable):
        return f"{shape_words(shape.shape)} or null"
    if isinstance(shape, ListOf):
        return "an array" + (f" of {_items(shape.length)}" if shape.length else
                             f" of at least {_items(shape.min_len)}" if shape.min_len else "")
    if isinstance(shape, (dict, DictOf, IfKey)):
        return "an object"
    return {NUMBER: "a number", int: "an integer", str: "a string", FLAG: "true or false"}[shape]


def json_words(value):
    """A JSON value as an error message names it: 'null', 'a string', 'an array of 0 items', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, NUMBER):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"an array of {_items(len(value))}" if isinstance(value, list) else "an object"


def make_step(path, study, writer):
    """'the compare step of make study STUDY=smoke' for a study the Makefile names, else None."""
    if study.name not in STUDIES:
        return None
    return (f"the {Path(writer.split()[0]).stem} step of make {MAKE_TARGETS.get(path.name, 'study')} "
            f"STUDY={study.name}")


def rewrite(path, study, writer=None):
    """How to replace a damaged input: 'write it again with compare.py (the compare step of ...)'."""
    writer = writer or WRITERS[path.name]
    step = make_step(path, study, writer)
    return f"write it again with {writer}" + (f" ({step})" if step else "")


def require_file(path, study):
    """A missing input is named with the script that writes it and how to run that script."""
    if not path.is_file():
        writer = WRITERS[path.name]
        how = make_step(path, study, writer) or f"run python {writer} for this study first"
        raise UserError(f"{path} is missing; {writer} writes it ({how})")


def checked(path, data, study, writer=None):
    """data, read from path, if it holds every key the report reads from its kind of file (READ_KEYS)."""
    found = mismatch(data, READ_KEYS[path.name])
    if found is None:
        return data
    where, value, shape = found
    problem = (f"lacks {where}, which the report reads" if value is MISSING else
               f"holds {json_words(value)} as {where}, where the report reads {shape_words(shape)}")
    raise UserError(f"{path} {problem}; {rewrite(path, study, writer)}")


#### Loading: every JSON file through contract.py, then checked

def load_json(path, study, what):
    """comparison.json, failures.json, faithfulness.json, seeds.json or ablation.json, checked;
    `what` names the file if it is not JSON at all."""
    require_file(path, study)
    return checked(path, read_json(path, what), study)


def load_config(run, study):
    """A run's config.json (contract.read_config's keys, then the report's); an imported model's is
    evaluate.py's."""
    path = run / "config.json"
    require_file(path, study)
    config = read_config(run)
    return checked(path, config, study, "evaluate.py --weights" if "imported" in config else None)


def load_metrics(run, study):
    require_file(run / "metrics.json", study)
    return checked(run / "metrics.json", read_metrics(run), study)


def load_gradcam(run, cases, study):
    """gradcam.json, which contract.read_gradcam checks to explain `cases` with metrics.json's weights."""
    require_file(run / "gradcam.json", study)
    return checked(run / "gradcam.json", read_gradcam(run, cases), study)


def load_extras(study, paths):
    """make seeds / make ablation results and both faithfulness.json, when they exist; their files
    are added to paths."""
    extras = {}
    for name in ("seeds", "ablation"):
        path = study / name / f"{name}.json"
        if path.is_file():
            paths[f"{name}_summary"] = path
            extras[name] = load_json(path, study, f"{name} summary")[name]
    if "seeds" in extras:
        check_seed_values(paths["seeds_summary"], extras["seeds"], study)
    faith = {m: study / m / "faithfulness.json" for m in SIDES}
    if all(path.is_file() for path in faith.values()):  # the randomisation sentence needs both
        paths.update({f"{m}_faithfulness": path for m, path in faith.items()})
        extras["faithfulness"] = {m: load_json(path, study, "faithfulness results")
                                  for m, path in faith.items()}
    return extras


def check_seed_values(path, seeds, study):
    """What SEEDS cannot say: supplement.py's table has a row per seed, so each spread needs one value
    per seed, and prose.py prints each spread's std once there are two seeds or more."""
    n = len(seeds["seeds"])
    for key in (*SIDES, "difference"):
        if len(seeds[key]["values"]) != n:
            raise UserError(f"{path} holds {_items(len(seeds[key]['values']))} as seeds.{key}.values for "
                            f"{n} seeds, where the report reads one per seed; {rewrite(path, study)}")
        if n > 1 and seeds[key]["std"] is None:
            raise UserError(f"{path} holds null as seeds.{key}.std for {n} seeds, where the report reads "
                            f"a number; {rewrite(path, study)}")


def read_history(path):
    """train.py's history.csv as a list of per-epoch dicts of numbers, each with HISTORY_COLUMNS."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        # A timing column may be blank (a resumed run's boundary epoch): None, not an error.
        history = [{k: (int(v) if k == "epoch" else None if v == "" else float(v)) for k, v in r.items()}
                   for r in rows]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as e:
        raise UserError(f"{path} cannot be read as train.py's history ({e}); retrain or restore it") from None
    lacking = [c for c in HISTORY_COLUMNS if any(row.get(c) is None for row in history)]
    if lacking:
        raise UserError(f"{path} lacks {', '.join(lacking)} for some epoch, which the report reads; it is "
                        "not train.py's history: retrain or restore it")
    return history


#### The LaTeX build

def write_text(path, text):
    atomic_write(path, lambda f: f.write(text), mode="w")


def source_date(paths):
    """SOURCE_DATE_EPOCH if set, else the newest input's mtime: same inputs, same PDF date and bytes."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return os.environ["SOURCE_DATE_EPOCH"]
    return str(max(int(p.stat().st_mtime) for p in paths.values()))


def first_error(log_text):
    for line in log_text.splitlines():
        if line.startswith("!") or re.match(r"^\S+:\d+: ", line):
            return line.strip()
    return "no error line found"


def build_pdf(report_dir, epoch, name="report"):
    """latexmk on report_dir/<name>.tex in report_dir/build-<name>, from scratch; returns (the
    PDF's path, its page count). The main report keeps build/ for its name."""
    missing = [tool for tool in ("latexmk", "pdflatex") if shutil.which(tool) is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} not found, so {report_dir / f'{name}.tex'} was written "
                        f"but not compiled; install LaTeX (Debian/Ubuntu: sudo apt-get install "
                        f"{LATEX_PACKAGES}, about 30 s) and run again")
    build = report_dir / ("build" if name == "report" else f"build-{name}")
    shutil.rmtree(build, ignore_errors=True)  # no stale .aux: the same inputs, the same passes
    env = dict(os.environ, SOURCE_DATE_EPOCH=epoch, FORCE_SOURCE_DATE="1")
    cmd = ["latexmk", "-norc", "-pdf", "-recorder", "-interaction=nonstopmode", "-halt-on-error",
           "-file-line-error", f"-outdir={build.name}", f"{name}.tex"]
    log = build / f"{name}.log"
    try:
        proc = subprocess.run(cmd, cwd=report_dir, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise UserError(f"LaTeX did not finish within 10 minutes; see {log}") from None
    text = log.read_text(errors="replace") if log.is_file() else ""
    if proc.returncode != 0 or not (build / f"{name}.pdf").is_file():
        raise UserError(f"LaTeX failed to build the report ({first_error(text)}); see {log}")
    match = re.search(r"Output written on .*?\((\d+)\s+pages?", text, re.S)
    if match is None:
        raise UserError(f"could not read the page count from {log}; see that log")
    return build / f"{name}.pdf", int(match.group(1))
