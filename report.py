"""Build a study's PDF report from its JSON results: generated LaTeX macros, tables and prose.

    python report.py --study runs/resnet18-cifar100 --out runs/resnet18-cifar100/report.pdf

Needs the study folder that `make study` fills (baseline/, improved/, compare/), pdflatex and
latexmk. Writes <out dir>/report/: macros.tex (every number and every result-dependent sentence as
a \\newcommand), table-*.tex, figures.txt (the figures the report includes), report.tex (a copy of
report/report.tex) and build/ (latexmk's output, with the .fls recorder file); then copies
build/report.pdf to --out. The same inputs give the same PDF bytes (SOURCE_DATE_EPOCH).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

from common import UserError, atomic_write, cli_guard, read_json

TEMPLATE = Path(__file__).resolve().parent / "report" / "report.tex"
STUDIES = ("resnet18-cifar100", "simplecnn-cifar10", "smoke")  # the Makefile's STUDY values
MAX_PAGES = 6
# Figure sizes tried in turn until the report fits MAX_PAGES; below 0.85 the smallest labels
# would print under 6 pt.
FIGURE_SCALES = (1.0, 0.85)
LATEX_PACKAGES = "texlive-latex-base texlive-latex-recommended texlive-fonts-recommended latexmk"
# Every input, with the script that writes it: a missing file is reported with its producer.
INPUTS = {
    "base_config": ("baseline/config.json", "train.py"), "base_curves": ("baseline/curves.png", "train.py"),
    "base_metrics": ("baseline/metrics.json", "evaluate.py"),
    "impr_config": ("improved/config.json", "train.py"), "impr_curves": ("improved/curves.png", "train.py"),
    "impr_metrics": ("improved/metrics.json", "evaluate.py"),
    "failures": ("baseline/failures.json", "failures.py"),
    "failures_png": ("baseline/failures.png", "failures.py"),
    "gradcam_png": ("baseline/gradcam.png", "gradcam.py"),
    "comparison": ("compare/comparison.json", "compare.py"),
    **{f"cmp_{s}": (f"compare/{s}.pdf", "compare.py")
       for s in ("confidence", "high_confidence", "per_class", "gradcam_compare")},
}
FIGURE_MACROS = {"FigBaseCurves": "base_curves", "FigImprCurves": "impr_curves",
                 "FigFailures": "failures_png", "FigGradcam": "gradcam_png",
                 "FigConfidence": "cmp_confidence", "FigHighConf": "cmp_high_confidence",
                 "FigPerClass": "cmp_per_class", "FigGradcamCompare": "cmp_gradcam_compare"}
# compare.py figures that report.tex places only when comparison.json lists them (\ifHas<Name>).
OPTIONAL_FIGURES = {"reliability": "Reliability", "corruptions": "Corruptions"}
ARCH_NAMES = {"resnet18": "ResNet-18", "simplecnn": "SimpleCNN"}
SETTINGS = {  # config.json key -> label in the configuration table, in table order
    "arch": "architecture", "dataset": "dataset", "epochs": "epochs", "batch_size": "batch size",
    "optimizer": "optimizer", "lr": "learning rate", "momentum": "momentum (SGD)",
    "weight_decay": "weight decay", "milestones": "lr milestones (epochs)",
    "gamma": "lr factor at milestones",
    "augment": "augmentation", "cutmix_prob": "CutMix probability", "cutmix_alpha": "CutMix alpha",
    "label_smoothing": "label smoothing", "seed": "seed", "limit_train": "training subset",
    "limit_test": "test subset", "amp": "bf16 autocast", "compile": "torch.compile",
    "deterministic": "deterministic kernels"}


#### LaTeX text

TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}
UNICODE_TEX = {"→": r"\textrightarrow{}", "←": r"\textleftarrow{}", "≥": r"\ensuremath{\geq}",
               "≤": r"\ensuremath{\leq}", "≈": r"\ensuremath{\approx}", "×": r"\texttimes{}",
               "±": r"\textpm{}", "°": r"\textdegree{}", "µ": r"\textmu{}", "μ": r"\textmu{}",
               "–": "--", "—": "---", "‘": "`", "’": "'", "“": "``", "”": "''", "…": r"\dots{}"}


def tex_escape(text):
    """Any text from the data (class names, an analyst's hypothesis) as LaTeX that typesets it.

    Latin letters stay (T1 fonts have them); other characters without a glyph are folded to ASCII
    or become '?', so no input can stop the build."""
    out = []
    for ch in str(text):
        if ch in TEX_SPECIALS:
            out.append(TEX_SPECIALS[ch])
        elif ch in UNICODE_TEX:
            out.append(UNICODE_TEX[ch])
        elif ch.isspace():
            out.append(" ")
        elif ch.isascii():
            out.append(ch if ch.isprintable() else "")
        elif ord(ch) < 0x180 and ch.isalpha():
            out.append(ch)
        else:
            folded = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(tex_escape(folded) if folded else "?")
    return "".join(out)


def pct(x, digits=2):
    return f"{100 * x:.{digits}f}"


def signed(x, digits=2):
    """A signed number of points (x is a fraction), with a real minus sign."""
    return rf"\ensuremath{{{100 * x:+.{digits}f}}}"


def p_tex(p):
    """'$p = 0.012$', '$p = 4.0\\times 10^{-101}$' or '$p < 10^{-300}$'; never rounds across 0.05."""
    if p <= 0:
        return r"$p < 10^{-300}$"
    if p < 1e-3:
        mantissa, exponent = f"{p:.1e}".split("e")
        return rf"$p = {mantissa}\times 10^{{{int(exponent)}}}$"
    for digits in range(2, 7):
        text = f"{p:#.{digits}g}".rstrip(".")
        if (float(text) < 0.05) == (p < 0.05):
            return f"$p = {text}$"
    return f"$p = {p!r}$"


def seconds_text(s):
    if s is None:
        return "n/a"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def trend(new, old):
    if new == old:
        return f"stayed at {new}"
    return f"{'fell' if new < old else 'rose'} from {old} to {new}"


def setting_text(key, value):
    if value is None:
        return "all" if key.startswith("limit_") else "--"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "milestones":
        return ", ".join(map(str, value)) if value else "none (constant lr)"
    if key == "augment":
        return {"crop-flip": "crop + flip", "none": "none"}.get(value, tex_escape(value))
    if key == "arch":
        return ARCH_NAMES.get(value, tex_escape(value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return tex_escape(", ".join(map(str, value)))
    return tex_escape(value)


def dataset_name(name):
    base = Path(str(name)).name
    if base == "synthetic":
        return "synthetic shapes"
    for pattern, pretty in ((r"cifar-?100", "CIFAR-100"), (r"cifar-?10", "CIFAR-10")):
        if re.fullmatch(pattern, base, re.I):
            return pretty
        if re.search(pattern, base, re.I):
            return f"{pretty} (folder {tex_escape(base)})"
    return f"folder dataset {tex_escape(base)}"


def improvement_name(changed_values):
    """'CutMix (p 0.5) + label smoothing 0.1' from comparison.json's changed_values."""
    parts = []
    for key, v in changed_values.items():
        new = v["improved"]
        if key == "cutmix_prob":
            parts.append(f"CutMix (p {new:g})" if new else "no CutMix")
        elif key == "label_smoothing":
            parts.append(f"label smoothing {new:g}" if new else "no label smoothing")
        elif key == "augment":
            parts.append(f"{setting_text(key, new)} augmentation")
        else:
            parts.append(f"{tex_escape(SETTINGS.get(key, key))} {setting_text(key, new)}")
    return " + ".join(parts) if parts else "an unchanged configuration"


def changed_list(changed_values):
    names = [tex_escape(SETTINGS.get(k, k)) for k in changed_values]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names) or "nothing"


#### Loading

def load_extras(study, paths):
    """make seeds / make ablation results, when they exist; their files are added to paths."""
    extras = {}
    for name in ("seeds", "ablation"):
        path = study / name / "comparison.json"
        if path.is_file():
            paths[f"{name}_comparison"] = path
            extras[name] = read_json(path, f"{name} comparison").get(name)
    return extras


def load_study(study):
    """Paths of every input and the JSON files' contents; a missing file names its producer."""
    study = Path(study)
    if not study.is_dir():
        raise UserError(f"study folder {study} does not exist; run make study STUDY=<name> first")

    def missing(path, script):
        how = (f"the {Path(script).stem} step of make study STUDY={study.name}" if study.name in STUDIES
               else f"run python {script} for this study first")
        return UserError(f"{path} is missing; {script} writes it ({how})")
    paths = {key: study / rel for key, (rel, _) in INPUTS.items()}
    for key, path in paths.items():
        if not path.is_file():
            raise missing(path, INPUTS[key][1])
    data = {key: read_json(path, Path(INPUTS[key][0]).stem.replace("_", " "))
            for key, path in paths.items() if path.suffix == ".json"}
    cmp = data["comparison"]
    for stem in cmp.get("figures", []):
        if stem in OPTIONAL_FIGURES:
            paths[f"cmp_{stem}"] = study / "compare" / f"{stem}.pdf"
            if not paths[f"cmp_{stem}"].is_file():
                raise missing(paths[f"cmp_{stem}"], "compare.py")
        elif f"cmp_{stem}" not in paths:
            print(f"note: comparison.json lists the figure {stem}, which report.tex does not place",
                  file=sys.stderr)
    data.update(load_extras(study, paths))
    cases = data["failures"].get("cases") or []
    if not cases or any("evidence" not in c for c in cases):
        raise UserError(f"{paths['failures']} has no Grad-CAM evidence for its cases; gradcam.py "
                        f"adds it (python gradcam.py --run {study / 'baseline'})")
    for side in ("base", "impr"):
        key = "accuracy_baseline" if side == "base" else "accuracy_improved"
        if abs(data[f"{side}_metrics"]["test_accuracy"] - cmp[key]) > 1e-5:
            raise UserError(f"{paths['comparison']} is older than {paths[side + '_metrics']}; "
                            "re-run compare.py (make study does it)")
    return study, paths, data


#### Prose that depends on the results: generated here, so it stays true whatever the numbers

def at_threshold(cmp, threshold=0.9):
    """(t, baseline count, improved count) of wrong predictions with confidence >= t: t = 0.9, or
    where neither model has such errors, the highest threshold at which one of them has some."""
    rows = {r["threshold"]: r for r in cmp["high_confidence_errors"]}
    t = threshold if threshold in rows else max(rows)
    if not (rows[t]["baseline"] or rows[t]["improved"]):
        t = max((u for u, r in rows.items() if r["baseline"] or r["improved"]), default=t)
    return t, rows[t]["baseline"], rows[t]["improved"]


def accuracy_sentence(cmp):
    d, (lo, hi) = cmp["accuracy_difference"], cmp["bootstrap_ci95"]
    verb = "more accurate than" if d > 0 else "less accurate than" if d < 0 else "exactly as accurate as"
    ci = ("entirely above zero" if lo > 0 else "entirely below zero" if hi < 0 else
          "includes zero, so the data are also compatible with no difference")
    return (f"The improved model is {verb} the baseline on the {cmp['n_test']} test images: "
            rf"{pct(cmp['accuracy_improved'])}\,\% against {pct(cmp['accuracy_baseline'])}\,\% "
            f"({signed(d)} points); the paired bootstrap 95\\,\\% interval of the difference, "
            f"[{signed(lo)}, {signed(hi)}] points, is {ci}.")


def significance_sentence(cmp):
    p, c, w = cmp["mcnemar_p"], cmp["corrected"], cmp["worsened"]
    verdict = (", below 0.05: a split this uneven is unlikely if the two models were equally "
               "accurate on this test set" if p < 0.05 else
               ", not below 0.05: this test set does not show that the two models differ")
    return (f"Where exactly one of the two models is right, the improved model corrects {c} "
            f"baseline errors and introduces {w} new ones; McNemar's exact test gives {p_tex(p)}{verdict}.")


def high_confidence_sentence(cmp):
    t, nb, ni = at_threshold(cmp)
    errors_b, errors_i = cmp["corrected"] + cmp["both_wrong"], cmp["worsened"] + cmp["both_wrong"]
    if errors_i == errors_b:
        overall = f"with {errors_b} errors at any confidence for both"
    else:
        verb = "fell" if errors_i < errors_b else "rose"
        same = (errors_i < errors_b) == (ni < nb) and ni != nb
        overall = (f"and errors at any confidence also {verb}, from {errors_b} to {errors_i}" if same
                   else f"while errors at any confidence {verb} from {errors_b} to {errors_i}")
    s = (f"From the baseline to the improved model, wrong predictions made with a confidence of at "
         f"least {t:g} {trend(ni, nb)} (of {cmp['n_test']} test images), {overall}")
    conf = cmp.get("confidence") or {}
    mb = (conf.get("baseline") or {}).get("correct", {}).get("mean")
    mi = (conf.get("improved") or {}).get("correct", {}).get("mean")
    if mb is not None and mi is not None:
        means = f"{mi:.2f} against {mb:.2f}"
        if ni < nb and mi < mb:
            s += ("; part of the drop may be lower confidence across the board: the improved "
                  f"model is also less confident on its correct predictions (mean {means})")
        elif ni < nb:
            s += ("; this is not a general loss of confidence: on its correct predictions the "
                  f"improved model is at least as confident (mean {means})")
        elif ni > nb and mi > mb:
            s += ("; part of the rise may be higher confidence across the board: the improved "
                  f"model is also more confident on its correct predictions (mean {means})")
    return s + "."


def calibration_sentence(cmp):
    cal = cmp.get("calibration")
    if not cal:
        return ""
    b, i = cal["baseline"], cal["improved"]
    direction = "fell" if i["ece"] < b["ece"] else "rose" if i["ece"] > b["ece"] else "stayed the same"
    return (f"Expected calibration error ({cal.get('n_bins', 15)} bins, top label) {direction}: "
            f"{pct(b['ece'])}\\,\\% for the baseline, {pct(i['ece'])}\\,\\% for the improved model; the "
            f"negative log-likelihood went from {b['nll']:.3f} to {i['nll']:.3f} and the Brier score from "
            f"{b['brier']:.3f} to {i['brier']:.3f} (lower is better for all three).")


def corruptions_sentence(cmp):
    c = cmp.get("corruptions")
    if not c:
        return ""
    mce = c["mean_corruption_error"]
    direction = ("fell" if mce["improved"] < mce["baseline"] else "rose" if mce["improved"] > mce["baseline"]
                 else "stayed the same")
    sev = c.get("severities") or [0]
    s = (f"Under {len(c['corruptions'])} synthetic corruptions at severities {min(sev)}--{max(sev)} "
         f"({c['n']} test images), the mean corruption error {direction}: {pct(mce['baseline'])}\\,\\% for "
         f"the baseline, {pct(mce['improved'])}\\,\\% for the improved model")

    def names(ns):
        return ", ".join(tex_escape(n.replace("_", " ")) for n in ns)
    if c.get("helps_most"):
        s += f"; the change helps most against {names(c['helps_most'])}"
    if c.get("hurts_most"):
        s += f" and hurts most against {names(c['hurts_most'])}" if c.get("helps_most") else \
             f"; it hurts most against {names(c['hurts_most'])}"
    return s + "."


SHORT_CHECKPOINT = {"last": "final", "best": "best-on-test"}


def checkpoint_name(name):
    return {"last": "final (last epoch)", "best": "best-on-test"}.get(name, tex_escape(name))


def checkpoint_sentence(met_b, met_i, cfg_b, cfg_i):
    used = (met_b.get("checkpoint"), met_i.get("checkpoint"))
    if used == ("last", "last"):
        s = ("Both models are evaluated with their final weights (the last epoch); the epoch with "
             "the best test accuracy is reported for reference only, since choosing it would peek at "
             "the test set.")
    elif used == ("best", "best"):
        s = ("Both models are evaluated with their best-on-test checkpoint, the epoch with the highest "
             "test accuracy: the epoch was chosen on the test set, so these accuracies are optimistic.")
    else:
        s = (f"The models are evaluated with different checkpoints (baseline: {checkpoint_name(used[0])}, "
             f"improved: {checkpoint_name(used[1])}), so the comparison mixes final and best-on-test "
             "weights.")
    differ = [(who, c) for who, c in (("baseline", cfg_b), ("improved model", cfg_i))
              if c.get("best_epoch") != c.get("epochs")]
    if not differ:
        return s + (" For both models the best test accuracy came at the final epoch, so the two "
                    "checkpoints coincide.")
    parts = [f"the {who}'s best-on-test accuracy ({pct(c['best_test_accuracy'])}\\,\\% at epoch "
             f"{c['best_epoch']}) differs from its final one ({pct(c['final_test_accuracy'])}\\,\\%) by "
             f"{signed(c['best_test_accuracy'] - c['final_test_accuracy'])} points" for who, c in differ]
    return s + " The two checkpoints are not the same: " + " and ".join(parts) + "."


def seeds_sentence(cfg_b, cfg_i, seeds=None):
    if seeds and len(seeds["seeds"]) > 1:
        def spread(key, unit=r"\,\%"):
            st = seeds[key]
            mean = signed(st["mean"]) if key == "difference" else pct(st["mean"])
            return f"{mean}{unit} $\\pm$ {pct(st['std'])}"
        n = len(seeds["seeds"])
        return (f"Over {n} seeds ({', '.join(map(str, seeds['seeds']))}; make seeds) the baseline reaches "
                f"{spread('baseline')} and the improved model {spread('improved')} (mean $\\pm$ sample "
                f"standard deviation); the difference is {spread('difference', ' points')}, in favour of the "
                f"improved model on {seeds['improved_better']} of {n} seeds. The rest of this report analyses "
                f"the runs with seed {cfg_b.get('seed')}.")
    seeds = ("the same seed, " + str(cfg_b.get("seed")) if cfg_b.get("seed") == cfg_i.get("seed")
             else f"seeds {cfg_b.get('seed')} and {cfg_i.get('seed')}")
    return (f"Each model was trained once ({seeds}), so these results do not show how much "
            "either model varies between training runs; the bootstrap interval and McNemar's "
            "test cover the sampling of test images only.")


def ablation_sentence(rows):
    """make ablation: each partial change on its own against the baseline (one seed)."""
    if not rows:
        return ""
    parts = [f"{changed_list(r['changed'])} only: {pct(r['accuracy'])}\\,\\% ({signed(r['difference'])} "
             f"points, McNemar {p_tex(r['mcnemar_p'])})" for r in rows[1:]]
    return ("Ablation on the same seed (make ablation), each change alone against the baseline: "
            + "; ".join(parts) + f"; all together: {pct(rows[0]['accuracy'])}\\,\\% "
            f"({signed(rows[0]['difference'])} points).")


def code_sentence(cfg_b, cfg_i):
    cb, ci = (tex_escape(str(c.get("git_commit", "unknown"))[:12]) for c in (cfg_b, cfg_i))
    dirty = any(str(c.get("git_commit", "")).endswith("-dirty") for c in (cfg_b, cfg_i))
    note = " (with uncommitted changes)" if dirty else ""
    if cfg_b.get("git_commit") == cfg_i.get("git_commit"):
        return f"Both were trained from the same code version, commit \\texttt{{{cb}}}{note}."
    return (f"They were trained from different code versions, commits \\texttt{{{cb}}} and "
            f"\\texttt{{{ci}}}{note}: a change of code between the runs is not excluded.")


def selection_sentence(failures):
    sel, n = failures.get("selection") or {}, len(failures["cases"])
    if sel.get("source") == "analyst":
        s = f"An analyst chose the {n} cases (their test indices, given to failures.py)"
    else:
        s = (f"We select {n} distinct cases among the most confident errors "
             f"(rule: {tex_escape(sel.get('rule', 'n/a'))})")
    return s + (f"; {tex_escape(sel['note'])}." if sel.get("note") else ".")


def changed_sentence(cmp):
    vals = cmp["changed_values"]
    listed = [f"{tex_escape(SETTINGS.get(k, k))} ({setting_text(k, v['baseline'])} $\\to$ "
              f"{setting_text(k, v['improved'])})" for k, v in vals.items()]
    if not listed:
        return ("The two runs have identical training settings, so any difference between them "
                "comes from nondeterminism in training, not from a change of method.")
    if list(vals) == ["seed"]:
        return (f"The two runs differ only in their seed, {listed[0]}: any difference between them is "
                "variation between training runs, not the effect of a method.")
    if len(listed) == 1:
        return (f"The improved run changes exactly one setting, {listed[0]}; everything else, the "
                "seed included, is the same, so on this one seed the difference is attributable to "
                "that change.")
    return (f"The improved run changes {len(listed)} settings together: {', '.join(listed[:-1])} and "
            f"{listed[-1]}. This comparison does not separate their effects.")


def per_class_sentence(cmp):
    rows = [r for r in cmp["per_class"] if r["n"]]
    up, down = sum(r["change"] > 0 for r in rows), sum(r["change"] < 0 for r in rows)

    def named(rs):
        return ", ".join(f"{tex_escape(r['name'])} ({signed(r['change'], 1)})" for r in rs[:3])
    s = (f"Of the {len(rows)} classes, {up} gain accuracy, {down} lose and "
         f"{len(rows) - up - down} are unchanged")
    if cmp["top_gains"]:
        s += f"; the largest gains (points) are {named(cmp['top_gains'])}"
    if cmp["top_losses"]:
        s += f"; the largest losses are {named(cmp['top_losses'])}"
    return s + "."


def cases_sentence(cmp):
    cases = cmp.get("cases") or []
    if not cases:
        return ""
    fixed = [c for c in cases if c["fixed"]]
    which = ("none of them" if not fixed else f"all {len(cases)}" if len(fixed) == len(cases)
             else f"{len(fixed)} of them")
    s = f"Of the {len(cases)} baseline failure cases, the improved model classifies {which} correctly"
    still = [c for c in cases if not c["fixed"]]
    if still and fixed:
        s += "; still wrong: " + ", ".join(
            f"\\#{c['index']} ({tex_escape(c['true_name'])} $\\to$ {tex_escape(c['improved_pred_name'])})"
            for c in still)
    return s + "."


def errors_sentence(failures):
    sm = failures["summary"]
    levels = ", ".join(f"{n} at confidence $\\geq$ {t}"
                       for t, n in sorted(sm["errors_at_confidence"].items(), key=lambda kv: float(kv[0])))
    s = f"The baseline misclassifies {sm['n_errors']} of {sm['n_test']} test images ({levels})"
    if sm.get("confused_pairs"):
        top = sm["confused_pairs"][0]
        s += (f"; its most frequent confusion is {tex_escape(top['true_name'])} $\\to$ "
              f"{tex_escape(top['pred_name'])} ({top['count']} images)")
    s += "."
    if sm.get("share_within_superclass") is not None:
        s += (f" {pct(sm['share_within_superclass'], 1)}\\,\\% of its errors "
              f"({sm['errors_within_superclass']}) "
              "stay within the true class's superclass: fine-grained confusions between related classes.")
    return s


def gradcam_reference_sentence(failures):
    ref = failures.get("gradcam_reference")
    if not ref or not ref.get("n"):
        return ""
    s = (f"For reference, over {ref['n']} correctly classified test images of a fixed sample, "
         f"{pct(ref['empty_share'], 0)}\\,\\% of the predicted-class maps are empty")
    q = ref.get("centre_mass_quartiles")
    if q:
        s += f" and the middle half put {pct(q[0], 0)}--{pct(q[2], 0)}\\,\\% of their mass in the centre"
    if ref.get("peak_in_box_rate") is not None:
        s += f"; their peak lies on the object for {pct(ref['peak_in_box_rate'], 0)}\\,\\%"
    return s + "."


def training_curves_sentence(cfg):
    mixed = [w for w, on in (("CutMix-ed batches", cfg.get("cutmix_prob")),
                             ("smoothed labels", cfg.get("label_smoothing"))) if on]
    if not mixed:
        return ""
    return (f"Its training loss and accuracy are measured on {' and '.join(mixed)}, so they are not "
            "comparable with its test curves, which use plain images and labels.")


def conclusion_sentence(cmp, name):
    d = cmp["accuracy_difference"]
    effect = "raised" if d > 0 else "lowered" if d < 0 else "did not change"
    sig = "significant" if cmp["mcnemar_p"] < 0.05 else "not significant"
    t, nb, ni = at_threshold(cmp)
    hc = "reduced" if ni < nb else "increased" if ni > nb else "left unchanged"
    return (f"In this study, {name} {effect} test accuracy from {pct(cmp['accuracy_baseline'])}\\,\\% to "
            f"{pct(cmp['accuracy_improved'])}\\,\\% ({signed(d)} points, 95\\,\\% interval "
            f"[{signed(cmp['bootstrap_ci95'][0])}, {signed(cmp['bootstrap_ci95'][1])}]; McNemar "
            f"{p_tex(cmp['mcnemar_p'])}, {sig} at the 0.05 level) and {hc} the wrong predictions made "
            f"with confidence $\\geq$ {t:g} ({nb} $\\to$ {ni}).")


def limitation_sentences(data):
    cmp, cfg_b, cfg_i = data["comparison"], data["base_config"], data["impr_config"]
    used = {data["base_metrics"].get("checkpoint"), data["impr_metrics"].get("checkpoint")}
    k, changed = len(cmp["changed_values"]), changed_list(cmp["changed_values"])
    seeds = data.get("seeds")
    out = {
        "LimitSeeds": (f"{len(seeds['seeds'])} training runs per model; the figures, cases and tests "
                       f"analyse seed {cfg_b.get('seed')} only." if seeds and len(seeds["seeds"]) > 1 else
                       f"One training run per model (seed {cfg_b.get('seed')}"
                       + ("" if cfg_b.get("seed") == cfg_i.get("seed") else f" and {cfg_i.get('seed')}")
                       + "): the spread between training runs is not measured, and a difference "
                         "no larger than that spread would be invisible here."),
        "LimitCheckpoint": ("Final-epoch weights for both models: no choice was made on the test set."
                            if used == {"last"}
                            else "Best-on-test weights: the epoch was chosen on the test set, so the "
                                 "accuracies are optimistic." if used == {"best"}
                            else "The two models were evaluated with different checkpoints."),
        "LimitChanged": (f"{changed[:1].upper()}{changed[1:]} were changed together; the ablation "
                         "separates them on one seed." if k > 1 and data.get("ablation") else
                         f"{changed[:1].upper()}{changed[1:]} were changed together, so this comparison "
                         "cannot separate their effects." if k > 1 else
                         f"Only {changed} changed." if k == 1 else
                         "The two configurations are identical."),
    }
    if dataset_name(cfg_b["dataset"]).startswith("CIFAR-100"):  # the figure is for CIFAR-100's test set
        out["LimitLabels"] = ("High-confidence errors may include mislabelled images: about 5.85\\,\\% of "
                              "the CIFAR-100 test set (585 images) is mislabelled by the majority vote of "
                              "human reviewers (Northcutt et al., 2021), so a confident failure case is "
                              "worth checking by eye.")
    else:
        out["LimitLabels"] = ("High-confidence errors may include mislabelled or ambiguous test images; "
                              "a confident failure case is worth checking by eye before the model is blamed.")
    return out


def prose(data):
    cmp, failures = data["comparison"], data["failures"]
    cfg_b, cfg_i = data["base_config"], data["impr_config"]
    name = improvement_name(cmp["changed_values"])
    return {
        "ProseAccuracy": accuracy_sentence(cmp), "ProseSignificance": significance_sentence(cmp),
        "ProseHighConf": high_confidence_sentence(cmp), "ProseCalibration": calibration_sentence(cmp),
        "ProseCorruptions": corruptions_sentence(cmp),
        "ProseCheckpoint": checkpoint_sentence(data["base_metrics"], data["impr_metrics"], cfg_b, cfg_i),
        "ProseSeeds": seeds_sentence(cfg_b, cfg_i, data.get("seeds")), "ProseChanged": changed_sentence(cmp),
        "ProseAblation": ablation_sentence(data.get("ablation")),
        "AbstractSeeds": (f"Each model was trained with {len(data['seeds']['seeds'])} seeds; the analysis "
                          f"below uses seed {cfg_b.get('seed')}." if data.get("seeds") and len(data["seeds"]["seeds"]) > 1
                          else "Each model was trained once (1 seed)."),
        "ProseCode": code_sentence(cfg_b, cfg_i), "ProseSelection": selection_sentence(failures),
        "ProsePerClass": per_class_sentence(cmp), "ProseCases": cases_sentence(cmp),
        "ProseErrors": errors_sentence(failures),
        "ProseGradcamReference": gradcam_reference_sentence(failures),
        "ProseImprCurves": training_curves_sentence(cfg_i), "ProseConclusion": conclusion_sentence(cmp, name),
        **limitation_sentences(data),
    }


#### Macros and tables

def macros(data, figures, study_name):
    cmp, failures, cfg_b = data["comparison"], data["failures"], data["base_config"]
    m = {"StudyName": tex_escape(study_name), "ArchName": setting_text("arch", cfg_b["arch"]),
         "DatasetName": dataset_name(cfg_b["dataset"]),
         "ImprovementName": improvement_name(cmp["changed_values"]),
         "ChangedList": changed_list(cmp["changed_values"]), "NumChanged": str(len(cmp["changed_values"])),
         "NumClasses": str(cfg_b["num_classes"]), "NumTrain": str(cfg_b.get("n_train", "n/a")),
         "NumTest": str(cmp["n_test"]), "CamLayer": tex_escape(cmp.get("gradcam_layer", "")),
         "NumCases": str(len(failures["cases"])),
         "NumCasesFixed": str(sum(c["fixed"] for c in cmp["cases"] or [])),
         "AccDiff": signed(cmp["accuracy_difference"]), "CILow": signed(cmp["bootstrap_ci95"][0]),
         "CIHigh": signed(cmp["bootstrap_ci95"][1]), "BootstrapResamples": str(cmp["bootstrap"]["resamples"]),
         "McNemarP": p_tex(cmp["mcnemar_p"]), "GitCommit": tex_escape(cmp.get("git_commit", "unknown")),
         # Synthetic images come with the object's box, which gradcam.py draws.
         "BoxNote": "The dashed box marks the object." if cfg_b["dataset"] == "synthetic" else ""}
    for key in ("corrected", "worsened", "both_wrong", "both_right"):
        name = "".join(w.title() for w in key.split("_"))
        m[name], m[name + "Share"] = str(cmp[key]), pct(cmp["shares"][key], 1)
    for side, who in (("Base", "base"), ("Impr", "impr")):
        cfg, met = data[f"{who}_config"], data[f"{who}_metrics"]
        m.update({f"{side}AccEval": pct(met["test_accuracy"]), f"{side}TopFive": pct(met["top5_accuracy"]),
                  f"{side}AccFinal": pct(cfg["final_test_accuracy"]),
                  f"{side}AccBest": pct(cfg["best_test_accuracy"]),
                  f"{side}BestEpoch": str(cfg["best_epoch"]), f"{side}Epochs": str(cfg["epochs"]),
                  f"{side}EvalEpoch": str(met.get("epoch", "n/a")),
                  f"{side}Checkpoint": checkpoint_name(met.get("checkpoint", "last")),
                  f"{side}Seed": str(cfg.get("seed")), f"{side}Wall": seconds_text(cfg.get("wall_seconds")),
                  f"{side}Device": tex_escape(cfg.get("device_name", "n/a")),
                  f"{side}ImagesPerSecond": f"{cfg.get('train_images_per_second', 0):.0f}"})
    t, nb, ni = at_threshold(cmp)
    m.update(HighConfThreshold=f"{t:g}", HighConfBase=str(nb), HighConfImpr=str(ni))
    for kind, rows in (("Gain", cmp["top_gains"]), ("Loss", cmp["top_losses"])):
        m[f"Top{kind}Name"] = tex_escape(rows[0]["name"]) if rows else "none"
        m[f"Top{kind}Change"] = signed(rows[0]["change"], 1) if rows else signed(0, 1)
    m.update(prose(data))
    m.update(figures)
    bad = [k for k in m if not re.fullmatch(r"[A-Za-z]+", k)]
    assert not bad, f"macro names must be letters only: {bad}"
    lines = [f"\\newcommand{{\\{k}}}{{{v}}}" for k, v in m.items()]
    for stem, name in OPTIONAL_FIGURES.items():  # \ifHasReliability ... \fi in report.tex
        lines.append(f"\\newif\\ifHas{name}\\Has{name}{'true' if f'Fig{name}' in figures else 'false'}")
    return "\n".join(lines) + "\n"


def config_table(data, changed):
    cfg_b, cfg_i = data["base_config"], data["impr_config"]
    keys = [k for k in SETTINGS if k in cfg_b or k in cfg_i] + sorted(set(changed) - set(SETTINGS))
    skip = {"momentum": "sgd" not in (cfg_b.get("optimizer"), cfg_i.get("optimizer")),
            "cutmix_alpha": not (cfg_b.get("cutmix_prob") or cfg_i.get("cutmix_prob")),
            "limit_train": cfg_b.get("limit_train") is None and cfg_i.get("limit_train") is None,
            "limit_test": cfg_b.get("limit_test") is None and cfg_i.get("limit_test") is None}
    ragged = r">{\raggedright\arraybackslash}"
    names = (tex_escape(cfg_b.get("name", "baseline")), tex_escape(cfg_i.get("name", "improved")))
    lines = [rf"\begin{{tabularx}}{{\linewidth}}{{@{{}}{ragged}p{{0.36\linewidth}}{ragged}X{ragged}X@{{}}}}",
             r"\toprule", rf"setting & {names[0]} & {names[1]} \\",
             r"\midrule"]
    for k in keys:
        if skip.get(k) and k not in changed:
            continue
        b, i = setting_text(k, cfg_b.get(k)), setting_text(k, cfg_i.get(k))
        label = tex_escape(SETTINGS.get(k, k))
        lines.append(rf"\rowcolor{{changed}}\textbf{{{label}}} & \textbf{{{b}}} & \textbf{{{i}}} \\"
                     if k in changed else rf"{label} & {b} & {i} \\")
    met_b, met_i = data["base_metrics"], data["impr_metrics"]

    def row(label, f):
        return rf"{label} & {f(cfg_b, met_b)} & {f(cfg_i, met_i)} \\"
    lines += [r"\midrule",
              row("evaluated checkpoint", lambda c, m: f"{SHORT_CHECKPOINT.get(m.get('checkpoint'), 'n/a')}, "
                                                        f"epoch {m.get('epoch')}"),
              row("training / test images", lambda c, m: f"{c.get('n_train')} / {c.get('n_test')}"),
              row("wall time (train + test)", lambda c, m: seconds_text(c.get("wall_seconds"))),
              row("device", lambda c, m: tex_escape(c.get("device_name", "n/a"))),
              row("git commit", lambda c, m: rf"\texttt{{{tex_escape(str(c.get('git_commit'))[:12])}}}"),
              r"\bottomrule", r"\end{tabularx}"]
    return "\n".join(lines) + "\n"


def two_by_two_table(cmp):
    n, s = cmp["n_test"], cmp["shares"]

    def cell(key):
        return f"{cmp[key]} ({pct(s[key], 1)}\\,\\%)"
    right_b, right_i = cmp["both_right"] + cmp["worsened"], cmp["both_right"] + cmp["corrected"]
    return "\n".join([
        r"\begin{tabular}{@{}lrrr@{}}", r"\toprule",
        r" & improved right & improved wrong & total \\", r"\midrule",
        rf"baseline right & {cell('both_right')} & \textbf{{{cell('worsened')}}} & {right_b} \\",
        rf"baseline wrong & \textbf{{{cell('corrected')}}} & {cell('both_wrong')} & {n - right_b} \\",
        r"\midrule", rf"total & {right_i} & {n - right_i} & {n} \\", r"\bottomrule", r"\end{tabular}"]) + "\n"


def high_confidence_table(cmp):
    lines = [r"\begin{tabular}{@{}rrrr@{}}", r"\toprule", r"$t$ & baseline & improved & change \\",
             r"\midrule"]
    for r in cmp["high_confidence_errors"]:
        rel = ("--" if r["relative_reduction"] is None
               else rf"\ensuremath{{{-100 * r['relative_reduction']:+.0f}}}\,\%")
        lines.append(f"{r['threshold']:g} & {r['baseline']} & {r['improved']} & {rel} \\\\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def evidence_text(ev):
    def one(name, s):
        if s.get("empty"):
            return f"{name}: empty map"
        where = f"{pct(s['centre_mass'], 0)}\\,\\% central" if s.get("centre_mass") is not None else "n/a"
        if "peak_in_box" in s:
            where += ", peak " + ("on" if s["peak_in_box"] else "off") + " object"
        return f"{name}: {where}"
    r = ev.get("pred_true_correlation")
    corr = "$r$ n/a" if r is None else f"$r={r:.2f}$"
    return f"{one('pred.', ev['pred'])}; {one('true', ev['true'])}; {corr}"


def cases_table(failures, cmp):
    later = {c["index"]: c for c in cmp.get("cases") or []}
    lines = [r"\begin{tabularx}{\linewidth}{@{}r>{\raggedright\arraybackslash}p{0.25\linewidth}rr"
             r">{\raggedright\arraybackslash}X>{\raggedright\arraybackslash}p{0.15\linewidth}@{}}",
             r"\toprule",
             r"\# & true $\to$ predicted & conf. & $p$(true), rank & Grad-CAM evidence & improved model \\",
             r"\midrule"]
    for k, c in enumerate(failures["cases"]):
        pair = f"{tex_escape(c['true_name'])} $\\to$ {tex_escape(c['pred_name'])}"
        if "same_superclass" in c:
            pair += (f" (both {tex_escape(c['true_superclass'])})" if c["same_superclass"] else
                     f" ({tex_escape(c['true_superclass'])} $\\to$ {tex_escape(c['pred_superclass'])})")
        i = later.get(c["index"])
        after = ("--" if i is None else f"fixed ({i['improved_confidence']:.2f})" if i["fixed"] else
                 f"still wrong: {tex_escape(i['improved_pred_name'])} ({i['improved_confidence']:.2f})")
        source = "analyst" if c.get("hypothesis_source") == "analyst" else "automatic"
        lines += [f"{c['index']} & {pair} & {c['confidence']:.2f} & {c['true_prob']:.2f}, {c['true_rank']} & "
                  f"{evidence_text(c['evidence'])} & {after} \\\\",
                  rf"\multicolumn{{6}}{{@{{}}p{{\linewidth}}@{{}}}}{{\emph{{Hypothesis ({source}):}} "
                  rf"{tex_escape(c['hypothesis'])}}} \\",
                  r"\midrule" if k + 1 < len(failures["cases"]) else r"\bottomrule"]
    return "\n".join(lines + [r"\end{tabularx}"]) + "\n"


#### Build

def figure_paths(paths, report_dir):
    """Figure macros -> paths relative to the report folder (LaTeX runs there)."""
    keys = dict(FIGURE_MACROS, **{f"Fig{name}": f"cmp_{stem}" for stem, name in OPTIONAL_FIGURES.items()
                                  if f"cmp_{stem}" in paths})
    out = {}
    for macro, key in keys.items():
        rel = Path(os.path.relpath(paths[key], report_dir)).as_posix()
        if re.search(r"[\s%#{}\\~^$&]", rel):
            raise UserError(f"figure path {rel} has characters LaTeX cannot read in a file name; "
                            "use a study folder and --out without spaces or %#{}\\~^$&")
        out[macro] = rel
    return out


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text), mode="w")


def write_sources(study, paths, data, report_dir, scale=1):
    if not TEMPLATE.is_file():
        raise UserError(f"the LaTeX source {TEMPLATE} is missing; restore it from git")
    figures = figure_paths(paths, report_dir)
    cmp = data["comparison"]
    write_text(report_dir / "macros.tex", macros(data, dict(figures, FigScale=f"{scale:g}"), study.name))
    write_text(report_dir / "table-config.tex", config_table(data, cmp["changed_settings"]))
    write_text(report_dir / "table-twobytwo.tex", two_by_two_table(cmp))
    write_text(report_dir / "table-highconf.tex", high_confidence_table(cmp))
    write_text(report_dir / "table-cases.tex", cases_table(data["failures"], cmp))
    write_text(report_dir / "figures.txt", "".join(f"{p}\n" for p in figures.values()))
    write_text(report_dir / "report.tex", TEMPLATE.read_text())
    return figures


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


def make_report(args):
    study, paths, data = load_study(args.study)
    out = Path(args.out) if args.out else study / "report.pdf"
    report_dir = out.parent / "report"
    for scale in FIGURE_SCALES:
        figures = write_sources(study, paths, data, report_dir, scale)
        pdf, pages = build_pdf(report_dir, source_date(paths))
        if pages <= args.max_pages:
            break
        print(f"note: {pages} pages at figure scale {scale:g}, more than {args.max_pages}", file=sys.stderr)
    else:
        raise UserError(f"the report has {pages} pages even with figures at {scale:g} of their size, "
                        f"more than the limit of {args.max_pages}; shorten {TEMPLATE} "
                        f"(the build is in {pdf.parent})")
    pdf_bytes = pdf.read_bytes()
    atomic_write(out, lambda f: f.write(pdf_bytes))
    shrunk = f", figures at {scale:g} of their size" if scale != 1 else ""
    print(f"{out}: {pages} pages{shrunk}, {len(figures)} figures (LaTeX sources and log in {report_dir})")
    return {"pdf": str(out), "pages": pages, "figure_scale": scale, "report_dir": str(report_dir),
            "figures": figures}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="study folder with baseline/, improved/ and compare/")
    p.add_argument("--out", default=None, help="the PDF to write (default: <study>/report.pdf); "
                   "the LaTeX sources go to report/ next to it")
    # The study's brief allows six pages: a longer report is an error, not a warning.
    p.add_argument("--max-pages", type=int, default=MAX_PAGES)
    args = p.parse_args(argv)
    if args.max_pages < 1:
        p.error("--max-pages must be at least 1")
    return cli_guard(make_report, args)


if __name__ == "__main__":
    main()
