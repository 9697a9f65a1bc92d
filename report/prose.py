"""The report's words: LaTeX-safe text from the data, and every sentence that depends on the results.

Generated from comparison.json and the runs' JSON files, so each sentence stays true whatever the
numbers are (report.py puts them into macros.tex; supplement.py uses the text helpers).
"""
import re
import unicodedata
from pathlib import Path

from settings import label as setting_label

ARCH_NAMES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50",
              "resnet101": "ResNet-101", "resnet152": "ResNet-152", "wide_resnet50_2": "Wide ResNet-50-2",
              "wide_resnet101_2": "Wide ResNet-101-2", "resnext50_32x4d": "ResNeXt-50 (32x4d)",
              "simplecnn": "SimpleCNN"}


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
    """A signed number of points (x is a fraction), with a real minus sign.

    Zero has no sign, and a nonzero x gets up to 4 more digits rather than read as +0.00, so
    the words built from its sign ("more accurate", "gains") never contradict the number shown;
    below that (float noise, not a count of images) it is shown as an unsigned zero."""
    v, shown = 100 * x, digits
    while v and round(v, shown) == 0 and shown < digits + 4:
        shown += 1
    if round(v, shown) == 0:
        return rf"\ensuremath{{{0:.{digits}f}}}"
    return rf"\ensuremath{{{v:+.{shown}f}}}"


def count(n, noun, plural=None):
    """'1 class', '0 classes', '3 test images': a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def and_list(items):
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


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


def dataset_name(name, num_classes=None):
    base = Path(str(name)).name
    if base == "synthetic":
        return "synthetic shapes"
    if re.search(r"\.(tar\.gz|tgz)$", base, re.I):  # an archive given by path: maybe generated
        kind = {100: "CIFAR-100", 10: "CIFAR-10"}.get(num_classes, "CIFAR")
        return f"{kind}-format archive {tex_escape(base)}"
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
            parts.append(f"{tex_escape(setting_label(key))} {setting_text(key, new)}")
    return " + ".join(parts) if parts else "an unchanged configuration"


def changed_list(changed_values):
    names = [tex_escape(setting_label(k)) for k in changed_values]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names) or "nothing"


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
    ci = ("lies entirely above zero" if lo > 0 else "lies entirely below zero" if hi < 0 else
          "includes zero, so the data are also compatible with no difference")
    return (f"The improved model is {verb} the baseline on the {count(cmp['n_test'], 'test image')}: "
            rf"{pct(cmp['accuracy_improved'])}\,\% against {pct(cmp['accuracy_baseline'])}\,\% "
            f"({signed(d)} points); the paired bootstrap 95\\,\\% interval of the difference, "
            f"[{signed(lo)}, {signed(hi)}] points, {ci}.")


def significance_sentence(cmp):
    p, c, w = cmp["mcnemar_p"], cmp["corrected"], cmp["worsened"]
    verdict = (", below 0.05: a split this uneven is unlikely if the two models were equally "
               "accurate on this test set" if p < 0.05 else
               ", not below 0.05: this test set does not show that the two models differ")
    return (f"Where exactly one of the two models is right, the improved model corrects "
            f"{count(c, 'baseline error')} and introduces {count(w, 'new one')}; McNemar's exact "
            f"test gives {p_tex(p)}{verdict}.")


def smoothing_cap(cmp, t):
    """(eps, cap) when the improvement adds label smoothing eps and the threshold t lies within 0.1
    of cap = 1 - eps + eps/C, the top-class probability its targets ask for: the improved model's
    predictions rarely reach t then, right or wrong, so its count at t reflects the targets."""
    eps = ((cmp.get("changed_values") or {}).get("label_smoothing") or {}).get("improved")
    n_classes = len(cmp.get("per_class") or [])
    if not eps or not n_classes:
        return None
    cap = 1 - eps + eps / n_classes
    return (eps, cap) if t >= cap - 0.1 else None


def high_confidence_sentence(cmp):
    t, nb, ni = at_threshold(cmp)
    errors_b, errors_i = cmp["corrected"] + cmp["both_wrong"], cmp["worsened"] + cmp["both_wrong"]
    if errors_i == errors_b:
        overall = f"with {count(errors_b, 'error')} at any confidence for both"
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
    capped = smoothing_cap(cmp, t)
    if capped:
        eps, cap = capped
        s += (f". Label smoothing {eps:g} trains the improved model towards a top-class probability "
              f"of {cap:.2f} ($1-\\varepsilon+\\varepsilon/C$), so few of its predictions, right or "
              f"wrong, reach {t:g}: its count at this threshold reflects its targets as much as its "
              "errors, and the lower thresholds of the figure compare the models more fairly")
    return s + "."


def calibration_sentence(cmp):
    cal = cmp.get("calibration")
    if not cal:
        return ""
    b, i = cal["baseline"], cal["improved"]
    # Judged on the numbers as printed, so that the verb never contradicts them.
    direction = ("stayed the same" if pct(i["ece"]) == pct(b["ece"]) else
                 "fell" if i["ece"] < b["ece"] else "rose")
    return (f"Expected calibration error ({cal.get('n_bins', 15)} bins, top label) {direction}: "
            f"{pct(b['ece'])}\\,\\% for the baseline, {pct(i['ece'])}\\,\\% for the improved model; the "
            f"negative log-likelihood went from {b['nll']:.3f} to {i['nll']:.3f} and the Brier score from "
            f"{b['brier']:.3f} to {i['brier']:.3f} (lower is better for all three).")


def corruptions_sentence(cmp):
    c = cmp.get("corruptions")
    if not c:
        return ""
    mce = c["mean_corruption_error"]
    # Judged on the numbers as printed, so that the verb never contradicts them.
    direction = ("stayed the same" if pct(mce["improved"]) == pct(mce["baseline"]) else
                 "fell" if mce["improved"] < mce["baseline"] else "rose")
    sev = c.get("severities") or [0]
    levels = f"severity {min(sev)}" if min(sev) == max(sev) else f"severities {min(sev)}--{max(sev)}"
    kind = ("corruption of the published CIFAR-C files" if c.get("source") == "cifar-c"
            else "synthetic corruption")
    s = (f"Under {count(len(c['corruptions']), kind, kind.replace('corruption', 'corruptions', 1))} at {levels} "
         f"({count(c['n'], 'test image')}), the mean corruption error {direction}: "
         f"{pct(mce['baseline'])}\\,\\% for the baseline, {pct(mce['improved'])}\\,\\% for the "
         "improved model")

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


def code_resumes(cfg):
    """', resumed after epoch N with commit X' for each resume that ran other code than before it."""
    text, last = "", cfg.get("git_commit")
    for r in cfg.get("resumed") or []:
        if r.get("git_commit") != last:
            text += (f", resumed after epoch {r['after_epoch']} with commit "
                     f"\\texttt{{{tex_escape(str(r['git_commit'])[:12])}}}")
            last = r.get("git_commit")
    return text


def code_sentence(cfg_b, cfg_i):
    cb, ci = (tex_escape(str(c.get("git_commit", "unknown"))[:12]) for c in (cfg_b, cfg_i))
    commits = [c.get("git_commit", "") for c in (cfg_b, cfg_i)]
    commits += [r.get("git_commit", "") for c in (cfg_b, cfg_i) for r in c.get("resumed") or []]
    note = " (with uncommitted changes)" if any(str(c).endswith("-dirty") for c in commits) else ""
    rb, ri = code_resumes(cfg_b), code_resumes(cfg_i)
    if cfg_b.get("git_commit") == cfg_i.get("git_commit") and rb == ri:
        if rb:
            return f"Both were trained with the same code: commit \\texttt{{{cb}}}{rb}{note}."
        return f"Both were trained from the same code version, commit \\texttt{{{cb}}}{note}."
    if rb or ri:
        return (f"They were trained with different code: the baseline with commit \\texttt{{{cb}}}{rb}, "
                f"the improved model with commit \\texttt{{{ci}}}{ri}{note}: a change of code between "
                "the runs is not excluded.")
    return (f"They were trained from different code versions, commits \\texttt{{{cb}}} and "
            f"\\texttt{{{ci}}}{note}: a change of code between the runs is not excluded.")


def selection_sentence(failures):
    sel, n = failures.get("selection") or {}, len(failures["cases"])
    if sel.get("source") == "analyst":
        s = f"An analyst chose the {count(n, 'case')} (their test indices, given to failures.py)"
    else:
        s = (f"We select {count(n, 'distinct case')} among the most confident errors "
             f"(rule: {tex_escape(sel.get('rule', 'n/a'))})")
    return s + (f"; {tex_escape(sel['note'])}." if sel.get("note") else ".")


def changed_sentence(cmp):
    vals = cmp["changed_values"]
    listed = [f"{tex_escape(setting_label(k))} ({setting_text(k, v['baseline'])} $\\to$ "
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

    def part(k, one, many):  # '1 gains', '3 gain', 'none gain'
        return f"{k or 'none'} {one if k == 1 else many}"

    def ranked(kind, kinds, rs, total, unit):  # 'the only gain', 'the gains', 'the largest gains'
        named = and_list([f"{tex_escape(r['name'])} ({signed(r['change'], 1)})" for r in rs[:3]])
        if total == 1:
            return f"the only {kind}{unit} is {named}"
        return f"the {'' if len(rs[:3]) == total else 'largest '}{kinds}{unit} are {named}"
    s = (f"Of the {count(len(rows), 'class', 'classes')}, {part(up, 'gains', 'gain')} accuracy, "
         f"{part(down, 'loses', 'lose')} and {part(len(rows) - up - down, 'is', 'are')} unchanged")
    if cmp["top_gains"]:
        s += "; " + ranked("gain", "gains", cmp["top_gains"], up, " (points)")
    if cmp["top_losses"]:  # the unit once, on the first list given
        s += "; " + ranked("loss", "losses", cmp["top_losses"], down, "" if cmp["top_gains"] else " (points)")
    return s + "."


def cases_sentence(cmp):
    cases = cmp.get("cases") or []
    if not cases:
        return ""
    fixed = [c for c in cases if c["fixed"]]
    if len(cases) == 1:
        return ("The improved model classifies the one baseline failure case correctly." if fixed
                else "The improved model also misclassifies the one baseline failure case.")
    which = ("none of them" if not fixed else "both" if len(fixed) == len(cases) == 2
             else f"all {len(cases)}" if len(fixed) == len(cases) else f"{len(fixed)} of them")
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
    s = f"The baseline misclassifies {sm['n_errors']} of {count(sm['n_test'], 'test image')} ({levels})"
    if sm.get("confused_pairs"):
        top = sm["confused_pairs"][0]
        s += (f"; its most frequent confusion is {tex_escape(top['true_name'])} $\\to$ "
              f"{tex_escape(top['pred_name'])} ({count(top['count'], 'image')})")
    s += "."
    if sm.get("share_within_superclass") is not None:
        s += (f" {pct(sm['share_within_superclass'], 1)}\\,\\% of its errors "
              f"({sm['errors_within_superclass']}) "
              "stay within the true class's superclass: fine-grained confusions between related classes.")
    return s


def coarse_maps_sentence(gradcam, layer_tex):
    """How coarse the explained layer's maps are, from the map and image sizes gradcam.py measured."""
    ref = gradcam.get("reference") or {}
    (h, w), (H, W) = ref.get("map_size") or (None, None), ref.get("image_size") or (None, None)
    if not h:
        return (f"Grad-CAM maps are coarse (layer \\texttt{{{layer_tex}}}, upsampled to the image) "
                "and scaled per image")
    s = (f"Grad-CAM maps at \\texttt{{{layer_tex}}} are {h}$\\times${w}, upsampled to {H}$\\times${W}")
    if h <= 4 and w <= 4:
        s += (f": each cell covers {H // h}$\\times${W // w} pixels, so these maps can tell only which "
              "region of the image held the evidence, not which object part")
    return s + "; they are scaled per image"


def randomisation_sentence(faith):
    """Adebayo et al.'s sanity check from both models' faithfulness.json; '' without them."""
    rand = {m: (faith.get(m) or {}).get("randomisation") for m in ("baseline", "improved")}
    if not all(r and r.get("spearman_mean") and None not in r["spearman_mean"] for r in rand.values()):
        return ""
    b, i = rand["baseline"], rand["improved"]
    head, passes = b["stages"][0], max(b["spearman_mean"][0], i["spearman_mean"][0]) < 0.5

    def rho(v):
        return f"{v:.2f}".replace("-", "\\ensuremath{-}")
    s = (f"Sanity check (Adebayo et al., 2018): with the weights re-initialised from the head down, "
         f"the mean rank correlation of {b['n']} test images' maps with the trained model's maps is "
         f"{rho(b['spearman_mean'][0])} (baseline) and {rho(i['spearman_mean'][0])} (improved) once "
         f"\\texttt{{{tex_escape(head)}}} is random, and {rho(b['spearman_mean'][-1])} and "
         f"{rho(i['spearman_mean'][-1])} with every layer random: ")
    return s + ("the maps depend on what the networks learned." if passes else
                "the maps stay close to the trained ones, so they may reflect the image more than "
                "what the networks learned.")


def gradcam_reference_sentence(gradcam):
    ref = gradcam.get("reference")
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
    capped = smoothing_cap(cmp, t)
    return (f"In this study, {name} {effect} test accuracy from {pct(cmp['accuracy_baseline'])}\\,\\% to "
            f"{pct(cmp['accuracy_improved'])}\\,\\% ({signed(d)} points, 95\\,\\% interval "
            f"[{signed(cmp['bootstrap_ci95'][0])}, {signed(cmp['bootstrap_ci95'][1])}]; McNemar "
            f"{p_tex(cmp['mcnemar_p'])}, {sig} at the 0.05 level) and {hc} the wrong predictions made "
            f"with confidence $\\geq$ {t:g} ({nb} $\\to$ {ni})"
            + (f", a threshold near the {capped[1]:.2f} that label smoothing trains the improved "
               "model to reach." if capped else "."))


# Published gains of CutMix for ResNet-type networks, in points of test accuracy, per dataset
# (../shared/FACTS.md): Westlake-AI/openmixup, CIFAR ResNet-18, CIFAR-100, 200 epochs: 76.42 ->
# 79.45 (+3.0); clovaai/CutMix-PyTorch, PyramidNet-200, CIFAR-100, 300 epochs: +2.2.
PUBLISHED_GAIN = {"CIFAR-100": (2.2, 3.0, "openmixup's ResNet-18 and CutMix's PyramidNet-200")}
FAR_ABOVE = 2.0  # a gain more than twice the published upper end is flagged
BEST_FINAL_GAP = 0.01  # best-on-test above final by a point or more: the test set chose an epoch
HIGH_ECE = 0.05
OVERFIT_TRAIN_ACC = 0.99
OVERFIT_LOSS_RISE = 1.1  # final test loss 10% above its minimum
UNDERFIT_TRAIN_ACC = 0.9  # a baseline below this on its own training batches has not fit the data


def _published_gain_check(cmp, cfg_b):
    gain = 100 * cmp["accuracy_difference"]
    name = dataset_name(cfg_b["dataset"], cfg_b.get("num_classes"))
    adds_cutmix = bool(cmp["changed_values"].get("cutmix_prob", {}).get("improved"))
    # A folder copy of CIFAR-100 counts; a CIFAR-100-format archive may hold generated images.
    known = PUBLISHED_GAIN.get(name.split(" (folder")[0]) if adds_cutmix else None
    if known is None:  # a sentence of its own: it is a check not made, not one passed
        return ("No published range for this improvement on this dataset is on record, so the size "
                "of the gain is not checked against the literature."), None
    lo, hi, source = known
    text = (f"the gain of {signed(cmp['accuracy_difference'])} points compares with +{lo:.1f} to "
            f"+{hi:.1f} points published for CutMix on {name} ({source})")
    if gain > FAR_ABOVE * hi:
        return (f"The gain of {signed(cmp['accuracy_difference'])} points is far above the +{lo:.1f} "
                f"to +{hi:.1f} points published for CutMix on {name} ({source}): a weak baseline "
                "may explain much of it."), text
    return None, text


def _overfit_check(history):
    """The baseline near 100\\,\\% on its training batches while its test loss rises, or far
    from it (under-fitting: too short a schedule)."""
    if not history:
        return None, None
    last = history[-1]
    low = min(history, key=lambda h: h["test_loss"])
    if last["train_acc"] < UNDERFIT_TRAIN_ACC:
        return (f"The baseline ends at only {pct(last['train_acc'], 1)}\\,\\% training accuracy "
                f"after {last['epoch']} epochs: it under-fits, and a regulariser such as the improvement "
                "is expected to cost accuracy until training is long enough to fit the data."), None
    if last["train_acc"] >= OVERFIT_TRAIN_ACC and last["test_loss"] >= OVERFIT_LOSS_RISE * low["test_loss"]:
        return (f"The baseline ends at {pct(last['train_acc'], 1)}\\,\\% training accuracy while its test "
                f"loss rose from {low['test_loss']:.3f} (epoch {low['epoch']}) to {last['test_loss']:.3f}: "
                "it over-fits, and the improvement may act as the regulariser the baseline lacks."), None
    return None, (f"the baseline ends at {pct(last['train_acc'], 1)}\\,\\% training accuracy with a "
                  f"final test loss of {last['test_loss']:.3f} (lowest {low['test_loss']:.3f})")


def _best_final_check(cfg, role):
    best, final = cfg.get("best_test_accuracy"), cfg.get("final_test_accuracy")
    if best is None or final is None:
        return None, None
    if best - final >= BEST_FINAL_GAP:
        return (f"The {role}'s best-on-test accuracy ({pct(best)}\\,\\% at epoch {cfg.get('best_epoch')}) "
                f"is {100 * (best - final):.2f} points above its final one: which epoch is reported "
                "matters."), None
    return None, f"{100 * (best - final):.2f}"


def _ece_check(metrics, role):
    ece = metrics.get("ece")
    if ece is not None and ece > HIGH_ECE:
        return (f"The {role}'s confidence is far from its accuracy (ECE {pct(ece, 1)}\\,\\%).",
                f"{pct(ece, 1)}")
    return None, None if ece is None else f"{pct(ece, 1)}"


def recipe_check_sentence(data):
    """Checks of the recipe from what the study has: the gain against the literature, over-fitting,
    best-on-test against final, calibration. Warnings first, then the numbers of the checks passed."""
    cmp, cfg_b, cfg_i = data["comparison"], data["base_config"], data["impr_config"]
    warnings, notes = [], []
    warn, note = _published_gain_check(cmp, cfg_b)
    warnings.append(warn), notes.append(note)
    warn, note = _overfit_check(data.get("base_history"))
    warnings.append(warn), notes.append(note)
    gaps = []
    for cfg, role in ((cfg_b, "baseline"), (cfg_i, "improved model")):
        warn, gap = _best_final_check(cfg, role)
        warnings.append(warn), gaps.append(gap)
    if all(gaps):
        notes.append(f"best-on-test and final accuracies differ by {gaps[0]} and {gaps[1]} points")
    eces = []
    for metrics, role in ((data["base_metrics"], "baseline"), (data["impr_metrics"], "improved model")):
        warn, ece = _ece_check(metrics, role)
        warnings.append(warn), eces.append(ece)
    if all(eces) and not any(w and "ECE" in w for w in warnings):
        notes.append(f"ECE is {eces[0]}\\,\\% and {eces[1]}\\,\\%")
    warnings, notes = [w for w in warnings if w], [n for n in notes if n]
    checked = f"Checks of the recipe: {and_list(notes)}." if notes else ""
    return " ".join(warnings + [checked]).strip()


def limitation_sentences(data):
    cmp, cfg_b, cfg_i = data["comparison"], data["base_config"], data["impr_config"]
    used = {data["base_metrics"].get("checkpoint"), data["impr_metrics"].get("checkpoint")}
    k, changed = len(cmp["changed_values"]), changed_list(cmp["changed_values"])
    seeds = data.get("seeds")
    out = {
        "LimitRecipe": recipe_check_sentence(data),
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
    if re.match(r"CIFAR-100( |$)", dataset_name(cfg_b["dataset"])):  # a figure for CIFAR-100's test set
        out["LimitLabels"] = ("High-confidence errors may include mislabelled images: about 5.85\\,\\% of "
                              "the CIFAR-100 test set (585 images) is mislabelled by the majority vote of "
                              "human reviewers (Northcutt et al., 2021), so a confident failure case is "
                              "worth checking by eye.")
    else:
        out["LimitLabels"] = ("High-confidence errors may include mislabelled or ambiguous test images; "
                              "a confident failure case is worth checking by eye before the model is blamed.")
    return out


#### What a run's training was, or what an imported model leaves unknown

def training_sentence(cfg, met, role):
    """The paragraph on one model's training: evaluate.py's accuracy first (float32, the number
    every later section uses), then what train.py saw per epoch; for an imported model, what is
    known of its weights and that its recipe, curves and time are not."""
    acc = f"{pct(met['test_accuracy'])}\\,\\% test accuracy (top-5 {pct(met['top5_accuracy'])}\\,\\%)"
    imported = cfg.get("imported")
    if imported:
        return (f"{role} was trained elsewhere and imported from \\texttt{{{tex_escape(Path(imported['weights']).name)}}} "
                f"(SHA-256 \\texttt{{{imported['sha256'][:12]}}}, {tex_escape(imported['found'])}; input "
                f"normalisation: {tex_escape(imported['normalisation'])}): its training recipe, learning "
                f"curves and training time are unknown here. On the test set it reaches {acc}.")
    which = SHORT_CHECKPOINT.get(met.get("checkpoint"), "final")
    s = (f"{role} reaches {acc} with its {which} weights (epoch {met.get('epoch')} of {cfg['epochs']}); "
         f"during training its best test accuracy, {pct(cfg['best_test_accuracy'])}\\,\\%, came at epoch "
         f"{cfg['best_epoch']}.")
    if cfg.get("precision") == "bf16 autocast" and met.get("checkpoint") == "last" \
            and round(cfg["final_test_accuracy"], 4) != round(met["test_accuracy"], 4):
        s += (f" Training measured the test set under bf16 autocast ({pct(cfg['final_test_accuracy'])}\\,\\% "
              "at the last epoch), evaluation in float32.")
    return s + (f" Training and testing took {seconds_text(cfg.get('wall_seconds'))} on "
                f"{tex_escape(cfg.get('device_name', 'n/a'))}, at {cfg.get('train_images_per_second', 0):.0f} "
                "training images/s.")


def imported_prose(data):
    """The sentences about how the models were trained, rewritten when either was imported: they
    say what this study cannot know instead of printing empty or invented values."""
    cfg_b, cfg_i = data["base_config"], data["impr_config"]
    which = and_list([r for r, c in (("baseline", cfg_b), ("improved model", cfg_i)) if c.get("imported")])
    both = cfg_b.get("imported") and cfg_i.get("imported")
    subject = "both models were" if both else f"the {which} was"
    commit = tex_escape(str(data["comparison"].get("git_commit", "unknown"))[:12])
    return {
        "ImprovementName": "an improved model, both imported" if both else f"an improved model ({which} imported)",
        "ProseStudyLead": (f"We take a baseline and an improved {setting_text('arch', cfg_b['arch'])} for "
                           f"{dataset_name(cfg_b['dataset'], cfg_b.get('num_classes'))} ({subject} trained "
                           f"elsewhere and imported),"),
        "ProseSetupLead": (f"Both models are tested on the same {cfg_b['n_test']} images of "
                           f"{cfg_b['num_classes']} classes; {subject} trained elsewhere, so Table~\\ref{{tab:config}} "
                           "shows what is known of them and no setting can be named as their difference."),
        "ProseCode": (f"This analysis ran at commit \\texttt{{{commit}}}; the training code of the "
                      f"imported {'models' if both else which} is unknown."),
        "ProseChanged": ("What differs between the two models' training is unknown to this study: the "
                         "comparison below measures how they differ, not why."),
        "ProseImprLead": "",
        "ProseSeeds": "", "AbstractSeeds": "",
        "ProseCheckpoint": (f"Imported weights are evaluated as given: whether "
                            f"{'they are' if both else 'the ' + which + chr(39) + 's are'} final or "
                            "best-on-test checkpoints is not known here."),
        "LimitCheckpoint": (f"{'Both models' + chr(39) if both else 'The ' + which + chr(39) + 's'} weights were imported: whether "
                            "their epoch was chosen on the test set, which would make the accuracy "
                            "optimistic, is unknown."),
        "LimitSeeds": ("One model per side: the spread between training runs is not measured, and a "
                       "difference no larger than that spread would be invisible here."),
        "LimitChanged": ("The models' training recipes are unknown, so the differences measured here "
                         "cannot be attributed to a change of method."),
        "ProseConclusion": conclusion_sentence(data["comparison"], "replacing the baseline by the improved model"),
        "LimitRecipe": " ".join(
            [w for w, _ in (_ece_check(data["base_metrics"], "baseline"),
                            _ece_check(data["impr_metrics"], "improved model")) if w]
            + ["Checks of the training recipe (the gain against published results, under- and "
               "over-fitting, best-on-test against final accuracy) need the recipe and learning curves "
               "that imported models lack."]),
    }


def prose(data):
    cmp, failures = data["comparison"], data["failures"]
    cfg_b, cfg_i = data["base_config"], data["impr_config"]
    name = improvement_name(cmp["changed_values"])
    text = {
        "ProseStudyLead": (f"We train {setting_text('arch', cfg_b['arch'])} from scratch on "
                           f"{dataset_name(cfg_b['dataset'], cfg_b.get('num_classes'))} twice, as a "
                           f"baseline and with {name},"),
        "ProseSetupLead": (f"Both runs train on the same {cfg_b['n_train']} images and are tested on the "
                           f"same {cmp['n_test']} images of {cfg_b['num_classes']} classes, with the "
                           "settings of Table~\\ref{tab:config}; the shaded rows are the settings that differ."),
        "ProseImprLead": (f"The improved model differs from the baseline in the shaded rows of "
                          f"Table~\\ref{{tab:config}} ({changed_list(cmp['changed_values'])})."),
        "ProseBaseTraining": training_sentence(cfg_b, data["base_metrics"], "The baseline"),
        "ProseImprTraining": training_sentence(cfg_i, data["impr_metrics"], "It" if not cfg_i.get("imported")
                                               else "The improved model"),
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
        "ProseGradcamReference": gradcam_reference_sentence(data["gradcam"]),
        "ProseCoarseMaps": coarse_maps_sentence(data["gradcam"], tex_escape(cmp.get("gradcam_layer", ""))),
        "ProseRandomisation": randomisation_sentence(data.get("faithfulness") or {}),
        "ProseImprCurves": training_curves_sentence(cfg_i), "ProseConclusion": conclusion_sentence(cmp, name),
        **limitation_sentences(data),
    }
    if cfg_b.get("imported") or cfg_i.get("imported"):
        text.update(imported_prose(data))
    return text
