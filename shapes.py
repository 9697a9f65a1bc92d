"""The shape of every JSON file that a step writes and a later step reads, written down once.

A shape says which keys a file holds and what each holds. Two sides use it: the writer checks what
it is about to save against its file's shape (conform: a departure is a bug in the writer, caught
before the file exists), and the report build checks what it reads (mismatch, in report/study.py)
and then reads every key directly: filled() gives an absent optional key its null, so no reader
guesses with `.get() or {}`.
"""
from dataclasses import dataclass

SIDES = ("baseline", "improved")

#### The shape language

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
    """`shape`, or null (its readers test it with `is None`)."""
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


#### The keys each kind of file holds for its readers
# A plain key is required; "key?" may be absent (a later version added it, or it belongs to an
# optional part); Nullable(...) may be null. Types are given where another type would crash the
# build; ANY marks what is only printed.

# comparison.json (compare.py): report.py's macros and tables, prose.py, supplement.py's sections.
TWO_BY_TWO = ("corrected", "worsened", "both_wrong", "both_right")
RECHECKED_CASE = {"index": int, "fixed": FLAG, "true_name": ANY, "improved_pred_name": ANY,
                  "improved_confidence": NUMBER}
CORRUPTIONS = {"severities": ListOf(NUMBER, min_len=1), "corruptions": ListOf(ANY), "n": ANY,
               "mean_corruption_error": both(NUMBER),
               "per_corruption": ListOf({"name": str, **both(NUMBER), "difference": NUMBER}),
               "helps_most?": Nullable(ListOf(str)), "hurts_most?": Nullable(ListOf(str)), "source?": ANY}
SUSPECTS = {"count": ANY, "share": NUMBER, "figure?": ANY,
            # the listed ones, which explore.py marks in its gallery
            "suspects?": ListOf({"row": int, "agreed": int, "baseline_confidence": NUMBER,
                                 "improved_confidence": NUMBER, "label_confidence": NUMBER})}
THRESHOLD_RANGE = {"min": NUMBER, "max": NUMBER}  # of each model's per-class thresholds
# judgements.recipe_checks: null where a check cannot be made (no published range, no training curve)
BEST_FINAL = Nullable({"best": NUMBER, "final": NUMBER, "best_epoch": ANY, "gap": NUMBER, "flagged": FLAG})
RECIPE_CHECKS = {
    "thresholds": DictOf(NUMBER),
    "published_gain": Nullable({"dataset": str, "low": NUMBER, "high": NUMBER, "source": ANY, "gain": NUMBER,
                                "far_above": FLAG}),
    "fit": Nullable({"verdict": Nullable(str), "epochs": ANY, "train_acc": NUMBER, "final_test_loss": NUMBER,
                     "lowest_test_loss": NUMBER, "lowest_epoch": ANY}),
    "best_final": both(BEST_FINAL), "ece": both({"ece": NUMBER, "high": FLAG})}
COMPARISON = {
    "n_test": NUMBER, "accuracy_baseline": NUMBER, "accuracy_improved": NUMBER,
    "accuracy_difference": NUMBER, "bootstrap_ci95": ListOf(NUMBER, length=2),
    "bootstrap": {"resamples": ANY}, "mcnemar_p": NUMBER,
    **dict.fromkeys(TWO_BY_TWO, NUMBER), "shares": dict.fromkeys(TWO_BY_TWO, NUMBER),
    "high_confidence_errors": ListOf({"threshold": NUMBER, **both(NUMBER),
                                      "relative_reduction": Nullable(NUMBER)}, min_len=1),
    "per_class": ListOf({"n": int, "change": Nullable(NUMBER)}),  # null for a class with no test image
    "top_gains": ListOf({"name": ANY, "change": NUMBER}), "top_losses": ListOf({"name": ANY, "change": NUMBER}),
    "changed_settings": ListOf(str),
    # prose.py names the improvement with the numbers of these two settings
    "changed_values": DictOf(both(ANY), known=dict.fromkeys(("cutmix_prob", "label_smoothing"),
                                                           both(Nullable(NUMBER)))),
    "recipe_checks": RECIPE_CHECKS,
    "cases": Nullable(ListOf(RECHECKED_CASE)),  # null until compare.py is given the failure cases
    "figures?": ListOf(str), "gradcam_layer?": ANY, "git_commit?": ANY,
    "confidence?": both({"correct": {"mean": Nullable(NUMBER)}}),
    "calibration?": Nullable({"n_bins": int, **both({"ece": NUMBER, "nll": NUMBER, "brier": NUMBER})}),
    "corruptions?": Nullable(CORRUPTIONS),  # null without both runs' corruptions.json
    # A comparison.json written before the confident-learning rule has one fixed threshold instead.
    "label_error_suspects?": Nullable(IfKey("rule", {**SUSPECTS, "rule": both(THRESHOLD_RANGE)},
                                            {**SUSPECTS, "threshold": NUMBER})),
}

# config.json (train.py; evaluate.py --weights for an imported model), beyond contract.CONFIG_KEYS.
CONFIG = {"arch": str, "dataset": ANY, "num_classes": int, "n_train": ANY, "n_test": ANY,
          # of the training settings, those whose values the configuration table looks up or joins
          "augment?": Nullable(str), "milestones?": Nullable(ListOf(ANY)),
          "wall_seconds?": Nullable(NUMBER), "resumed?": Nullable(ListOf({"after_epoch": ANY})),
          "device_shared_by?": Nullable(int)}  # runs sharing the GPU (tools/launch.py)
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
MAP_STATS = {"empty?": ANY, "centre_mass?": Nullable(NUMBER), "peak_in_box?": ANY,
             "centre_mass_percentile?": Nullable(NUMBER)}  # explore.py shows it
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

# causes.json (causes.py) of the baseline: the stated cause of each case of failures.json.
PROBE = {"p_pred": NUMBER, "p_true": NUMBER, "top": int}
CAUSES = {"cases": ListOf({"index": int, "cause": str, "sentence": str, "confidence": NUMBER,
                           "evidence": {"neighbours": {"k": int, "train_rows": ListOf(int), "labels": ListOf(int),
                                                       "similarity": ListOf(NUMBER), "pred_share": NUMBER,
                                                       "true_share": NUMBER},
                                        "pair_errors": int, "pair_lift": NUMBER, "moved_by_small_changes": int,
                                        "interventions": DictOf(PROBE)}}, min_len=1),
          "thresholds": DictOf(NUMBER)}

# score.json (tools/score_causes.py, make planted): the cause rule scored on planted causes. The
# report quotes the precision and recall below, the supplement the whole table.
PRECISION = {"n": int, "all": Nullable(NUMBER), "top": Nullable(NUMBER)}  # null: the cause never stated
SCORE = {"thresholds": DictOf(NUMBER),
         "planted": {"table": DictOf(DictOf(int)), "top": ANY,
                     "precision": dict.fromkeys(("label_error", "lookalike", "context", "fragile"), PRECISION),
                     # null: nothing of that kind was planted among the errors
                     "recall": dict.fromkeys(("label_error", "lookalike", "context"), Nullable(NUMBER))},
         # the control model's errors (score_causes.py --control)
         "control?": {"n": int, "stated": DictOf(int), "false_alarms": int, "rate": Nullable(NUMBER)},
         "git_commit?": ANY}

# Each kind of JSON file by its name, as in contract.WRITERS. corruptions.json is not read: the
# report's corruption numbers are compare.py's, in comparison.json.
FILE_SHAPES = {"comparison.json": COMPARISON,
               "config.json": IfKey("imported", {**CONFIG, **IMPORTED}, {**CONFIG, **TRAINED}),
               "metrics.json": METRICS, "failures.json": FAILURES, "gradcam.json": GRADCAM,
               "faithfulness.json": FAITHFULNESS, "causes.json": CAUSES, "seeds.json": SEEDS, "ablation.json": ABLATION,
               "score.json": SCORE}


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


def items_text(n):
    return f"{n} item" + ("" if n == 1 else "s")


def shape_words(shape):
    """A shape as an error message names it: 'a number', 'an array of 2 items', ..."""
    if isinstance(shape, Nullable):
        return f"{shape_words(shape.shape)} or null"
    if isinstance(shape, ListOf):
        return "an array" + (f" of {items_text(shape.length)}" if shape.length else
                             f" of at least {items_text(shape.min_len)}" if shape.min_len else "")
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
    return f"an array of {items_text(len(value))}" if isinstance(value, list) else "an object"


def filled(value, shape):
    """value with every optional key ("key?") that it lacks present as null, in every object the
    shape describes; value must fit the shape (mismatch found nothing)."""
    if value is None:
        return None
    if isinstance(shape, Nullable):
        return filled(value, shape.shape)
    if isinstance(shape, IfKey):  # the keys of the branch not taken are present too, as null
        taken, other = (shape.then, shape.otherwise) if shape.key in value else (shape.otherwise, shape.then)
        out = filled(value, taken)
        return {**{k.removesuffix("?"): None for k in other}, **out}
    if isinstance(shape, dict):
        out = dict(value)
        for key, sub in shape.items():
            name = key.removesuffix("?")
            out[name] = filled(value[name], sub) if name in value else None
        return out
    if isinstance(shape, DictOf):
        known = shape.known or {}
        return {k: filled(v, known.get(k, shape.value)) for k, v in value.items()}
    if isinstance(shape, ListOf):
        return [filled(v, shape.item) for v in value]
    return value


def read_as(data, name, reader):
    """(data with each optional key it lacks present as null, None) if data has the shape of the
    file `name`; else (None, where it departs, in words: "lacks x, which <reader> reads" or "holds a
    string as x, where <reader> reads a number")."""
    found = mismatch(data, FILE_SHAPES[name])
    if found is None:
        return filled(data, FILE_SHAPES[name]), None
    where, value, shape = found
    return None, (f"lacks {where}, which {reader} reads" if value is MISSING else
                  f"holds {json_words(value)} as {where}, where {reader} reads {shape_words(shape)}")


def conform(data, name):
    """data, which a step is about to write as `name`, if it has the shape that readers of `name`
    rely on; otherwise the writer has a bug, reported before the file is written."""
    found = mismatch(data, FILE_SHAPES[name])
    if found is not None:
        where, value, shape = found
        raise AssertionError(f"{name} as written would hold {'nothing' if value is MISSING else json_words(value)} "
                             f"as {where or 'its top level'}, where its shape says {shape_words(shape)}")
    return data
