"""The report's sentences: every text that depends on the results, worded from the data.

Generated from comparison.json and the runs' JSON files, so each sentence stays true whatever the
numbers are. Three layers: report/tex.py formats (escaping, numbers, names); judgements.py decides
(thresholds and checks, made by compare.py and stored in comparison.json's recipe_checks); this
module only words. report.py puts its texts into macros.tex.
"""
import re
from pathlib import Path

from hypotheses import CAUSE_NAMES
from judgements import CAUSE_THRESHOLDS
from settings import label as setting_label
from tex import and_list, count, dataset_name, p_tex, pct, seconds_text, setting_text, signed, tex_escape, trend


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

def at_threshold(comparison, threshold=0.9):
    """(t, baseline count, improved count) of wrong predictions with confidence >= t: t = 0.9, or
    where neither model has such errors, the highest threshold at which one of them has some."""
    rows = {r["threshold"]: r for r in comparison["high_confidence_errors"]}
    t = threshold if threshold in rows else max(rows)
    if not (rows[t]["baseline"] or rows[t]["improved"]):
        t = max((u for u, r in rows.items() if r["baseline"] or r["improved"]), default=t)
    return t, rows[t]["baseline"], rows[t]["improved"]


def accuracy_sentence(comparison):
    d, (lo, hi) = comparison["accuracy_difference"], comparison["bootstrap_ci95"]
    verb = "more accurate than" if d > 0 else "less accurate than" if d < 0 else "exactly as accurate as"
    ci = ("lies entirely above zero" if lo > 0 else "lies entirely below zero" if hi < 0 else
          "includes zero, so the data are also compatible with no difference")
    return (f"The improved model is {verb} the baseline on the {count(comparison['n_test'], 'test image')}: "
            rf"{pct(comparison['accuracy_improved'])}\,\% against {pct(comparison['accuracy_baseline'])}\,\% "
            f"({signed(d)} points); the paired bootstrap 95\\,\\% interval of the difference, "
            f"[{signed(lo)}, {signed(hi)}] points, {ci}.")


def significance_sentence(comparison):
    p, c, w = comparison["mcnemar_p"], comparison["corrected"], comparison["worsened"]
    verdict = (", below 0.05: a split this uneven is unlikely if the two models were equally "
               "accurate on this test set" if p < 0.05 else
               ", not below 0.05: this test set does not show that the two models differ")
    return (f"Where exactly one of the two models is right, the improved model corrects "
            f"{count(c, 'baseline error')} and introduces {count(w, 'new one')}; McNemar's exact "
            f"test gives {p_tex(p)}{verdict}.")


def smoothing_cap(comparison, t):
    """(eps, cap) when the improvement adds label smoothing eps and the threshold t lies within 0.1
    of cap = 1 - eps + eps/C, the top-class probability its targets ask for: the improved model's
    predictions rarely reach t then, right or wrong, so its count at t reflects the targets."""
    smoothing = comparison["changed_values"].get("label_smoothing")  # present only if the models differ in it
    eps, n_classes = smoothing and smoothing["improved"], len(comparison["per_class"])
    if not eps or not n_classes:
        return None
    cap = 1 - eps + eps / n_classes
    return (eps, cap) if t >= cap - 0.1 else None


def high_confidence_sentence(comparison):
    t, confident_b, confident_i = at_threshold(comparison)
    shared = comparison["both_wrong"]
    errors_b, errors_i = comparison["corrected"] + shared, comparison["worsened"] + shared
    if errors_i == errors_b:
        overall = f"with {count(errors_b, 'error')} at any confidence for both"
    else:
        verb = "fell" if errors_i < errors_b else "rose"
        same = (errors_i < errors_b) == (confident_i < confident_b) and confident_i != confident_b
        overall = (f"and errors at any confidence also {verb}, from {errors_b} to {errors_i}" if same
                   else f"while errors at any confidence {verb} from {errors_b} to {errors_i}")
    s = (f"From the baseline to the improved model, wrong predictions made with a confidence of at "
         f"least {t:g} {trend(confident_i, confident_b)} (of {comparison['n_test']} test images), {overall}")
    conf = comparison["confidence"]  # null in a comparison.json older than the confidence figure
    mean_b, mean_i = (conf[side]["correct"]["mean"] for side in ("baseline", "improved")) if conf else (None, None)
    if mean_b is not None and mean_i is not None:
        means = f"{mean_i:.2f} against {mean_b:.2f}"
        if confident_i < confident_b and mean_i < mean_b:
            s += ("; part of the drop may be lower confidence across the board: the improved "
                  f"model is also less confident on its correct predictions (mean {means})")
        elif confident_i < confident_b:
            s += ("; this is not a general loss of confidence: on its correct predictions the "
                  f"improved model is at least as confident (mean {means})")
        elif confident_i > confident_b and mean_i > mean_b:
            s += ("; part of the rise may be higher confidence across the board: the improved "
                  f"model is also more confident on its correct predictions (mean {means})")
    capped = smoothing_cap(comparison, t)
    if capped:
        eps, cap = capped
        s += (f". Label smoothing {eps:g} trains the improved model towards a top-class probability "
              f"of {cap:.2f} ($1-\\varepsilon+\\varepsilon/C$), so few of its predictions, right or "
              f"wrong, reach {t:g}: its count at this threshold reflects its targets as much as its "
              "errors, and the lower thresholds of the figure compare the models more fairly")
    return s + "."


def calibration_sentence(comparison):
    cal = comparison["calibration"]
    if cal is None:
        return ""
    b, i = cal["baseline"], cal["improved"]
    # Judged on the numbers as printed, so that the verb never contradicts them.
    direction = ("stayed the same" if pct(i["ece"]) == pct(b["ece"]) else
                 "fell" if i["ece"] < b["ece"] else "rose")
    return (f"Expected calibration error ({cal['n_bins']} bins, top label) {direction}: "
            f"{pct(b['ece'])}\\,\\% for the baseline, {pct(i['ece'])}\\,\\% for the improved model; the "
            f"negative log-likelihood went from {b['nll']:.3f} to {i['nll']:.3f} and the Brier score from "
            f"{b['brier']:.3f} to {i['brier']:.3f} (lower is better for all three).")


def corruptions_sentence(comparison):
    c = comparison["corruptions"]
    if c is None:  # the runs have no corruptions.json
        return ""
    mce = c["mean_corruption_error"]
    # Judged on the numbers as printed, so that the verb never contradicts them.
    direction = ("stayed the same" if pct(mce["improved"]) == pct(mce["baseline"]) else
                 "fell" if mce["improved"] < mce["baseline"] else "rose")
    sev = c["severities"]
    levels = f"severity {min(sev)}" if min(sev) == max(sev) else f"severities {min(sev)}--{max(sev)}"
    kind = ("corruption of the published CIFAR-C files" if c["source"] == "cifar-c"
            else "synthetic corruption")
    s = (f"Under {count(len(c['corruptions']), kind, kind.replace('corruption', 'corruptions', 1))} at {levels} "
         f"({count(c['n'], 'test image')}), the mean corruption error {direction}: "
         f"{pct(mce['baseline'])}\\,\\% for the baseline, {pct(mce['improved'])}\\,\\% for the "
         "improved model")

    def names(ns):
        return ", ".join(tex_escape(n.replace("_", " ")) for n in ns)
    if c["helps_most"]:
        s += f"; the change helps most against {names(c['helps_most'])}"
    if c["hurts_most"]:
        s += f" and hurts most against {names(c['hurts_most'])}" if c["helps_most"] else \
             f"; it hurts most against {names(c['hurts_most'])}"
    return s + "."


SHORT_CHECKPOINT = {"last": "final", "best": "best-on-test"}


def checkpoint_name(name):
    return {"last": "final (last epoch)", "best": "best-on-test"}.get(name, tex_escape(name))


def checkpoint_sentence(base_metrics, impr_metrics, base_config, impr_config):
    used = (base_metrics.get("checkpoint"), impr_metrics.get("checkpoint"))
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
    differ = [(who, c) for who, c in (("baseline", base_config), ("improved model", impr_config))
              if c.get("best_epoch") != c.get("epochs")]
    if not differ:
        return s + (" For both models the best test accuracy came at the final epoch, so the two "
                    "checkpoints coincide.")
    parts = [f"the {who}'s best-on-test accuracy ({pct(c['best_test_accuracy'])}\\,\\% at epoch "
             f"{c['best_epoch']}) differs from its final one ({pct(c['final_test_accuracy'])}\\,\\%) by "
             f"{signed(c['best_test_accuracy'] - c['final_test_accuracy'])} points" for who, c in differ]
    return s + " The two checkpoints are not the same: " + " and ".join(parts) + "."


def seeds_sentence(base_config, impr_config, seeds=None):
    if seeds and len(seeds["seeds"]) > 1:
        def spread(key, unit=r"\,\%"):
            stats = seeds[key]
            mean = signed(stats["mean"]) if key == "difference" else pct(stats["mean"])
            return f"{mean}{unit} $\\pm$ {pct(stats['std'])}"
        n = len(seeds["seeds"])
        return (f"Over {n} seeds ({', '.join(map(str, seeds['seeds']))}; make seeds) the baseline reaches "
                f"{spread('baseline')} and the improved model {spread('improved')} (mean $\\pm$ sample "
                f"standard deviation); the difference is {spread('difference', ' points')}, in favour of the "
                f"improved model on {seeds['improved_better']} of {n} seeds. The rest of this report analyses "
                f"the runs with seed {base_config.get('seed')}.")
    seeds = ("the same seed, " + str(base_config.get("seed")) if base_config.get("seed") == impr_config.get("seed")
             else f"seeds {base_config.get('seed')} and {impr_config.get('seed')}")
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


def code_sentence(base_config, impr_config):
    cb, ci = (tex_escape(str(c.get("git_commit", "unknown"))[:12]) for c in (base_config, impr_config))
    commits = [c.get("git_commit", "") for c in (base_config, impr_config)]
    commits += [r.get("git_commit", "") for c in (base_config, impr_config) for r in c.get("resumed") or []]
    note = " (with uncommitted changes)" if any(str(c).endswith("-dirty") for c in commits) else ""
    rb, ri = code_resumes(base_config), code_resumes(impr_config)
    if base_config.get("git_commit") == impr_config.get("git_commit") and rb == ri:
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
    sel = failures["selection"] or dict.fromkeys(("source", "rule", "note"))  # null: an older failures.json
    n = len(failures["cases"])
    if sel["source"] == "analyst":
        s = f"An analyst chose the {count(n, 'case')} (their test indices, given to failures.py)"
    else:
        s = (f"We select {count(n, 'distinct case')} among the most confident errors "
             f"(rule: {tex_escape(sel['rule'] or 'n/a')})")
    return s + (f"; {tex_escape(sel['note'])}." if sel["note"] else ".")


def changed_sentence(comparison):
    vals = comparison["changed_values"]
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


def per_class_sentence(comparison):
    rows = [r for r in comparison["per_class"] if r["n"]]
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
    if comparison["top_gains"]:
        s += "; " + ranked("gain", "gains", comparison["top_gains"], up, " (points)")
    if comparison["top_losses"]:  # the unit once, on the first list given
        unit = "" if comparison["top_gains"] else " (points)"
        s += "; " + ranked("loss", "losses", comparison["top_losses"], down, unit)
    return s + "."


def cases_sentence(comparison):
    cases = comparison["cases"] or []  # null: compare.py was not given the failure cases
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


#### The stated causes (causes.json) and how the rule did on planted causes (score.json)

def cause_name(cause):
    return CAUSE_NAMES.get(cause, cause.replace("_", " "))


def cause_words(stated):
    """A case's stated cause for Table 2: the name in bold, then causes.py's own words with the
    numbers that carry it (its sentence starts with the name, which is not repeated)."""
    name = cause_name(stated["cause"])
    words = stated["sentence"].removeprefix(f"{name}: ").replace("->", "→")
    return rf"\textbf{{{tex_escape(name)}}}: {tex_escape(words)}"


def cause_group(cause, flags):
    """How the improved model does on the cases of one stated cause (flags: each case fixed or not):
    'the look-alike case wrong', '1 of the 2 context-cue cases right', 'both fragile cases right'."""
    noun, n, k = f"{cause_name(cause).replace(' ', '-')} case", len(flags), sum(flags)
    if n == 1:
        return f"the {noun} {'right' if k else 'wrong'}"
    which = (f"none of the {n}" if not k else "both" if n == k == 2 else f"all {n}" if k == n else f"{k} of the {n}")
    return f"{which} {noun}s right"


def causes_recheck_sentence(causes, comparison):
    """The improved model on the baseline's cases, by stated cause: whether each cause went away.
    A label error that it 'gets right' agrees with a label that is likely wrong: that cause stays."""
    fixed = {c["index"]: c["fixed"] for c in comparison["cases"] or []}
    groups = {}
    for c in causes["cases"]:
        if c["index"] in fixed:
            groups.setdefault(c["cause"], []).append(bool(fixed[c["index"]]))
    if not groups:
        return ""
    order = sorted(groups, key=lambda c: list(CAUSE_NAMES).index(c) if c in CAUSE_NAMES else len(CAUSE_NAMES))
    s = "By stated cause, the improved model gets " + and_list([cause_group(c, groups[c]) for c in order])
    if sum(groups.get("label_error", [])):
        s += ("; where it gets a label error right it agrees with a label that is probably wrong, so "
              "that cause, the label, remains")
    return s + "."


def changed_thresholds(score):
    """The cause rule's thresholds that differ between a score and judgements.py, by name."""
    scored = score["thresholds"]
    return sorted(k for k in {*scored, *CAUSE_THRESHOLDS} if scored.get(k) != CAUSE_THRESHOLDS.get(k))


def cause_score_sentence(score):
    """How the cause rule did on planted causes (make planted's score.json), or that it was not
    scored here, or that the score at hand is of another rule (other thresholds)."""
    if score is None:
        return ("The rule has not been scored here: make planted scores it on the errors of a model "
                "trained on synthetic images with label errors, look-alikes and context cues planted.")
    differ = changed_thresholds(score)
    if differ:
        which = f"threshold {differ[0]} differs" if len(differ) == 1 else f"thresholds {and_list(differ)} differ"
        return (f"The planted score given is of another rule (its {tex_escape(which)} from judgements.py's), so it "
                "is not quoted; make planted scores this one.")
    s = score["planted"]
    n = sum(sum(row.values()) for row in s["table"].values())

    def right(cause):  # precision over every case stated so
        p = s["precision"][cause]
        return (f"none of the cases it called {cause_name(cause)}s" if not p["n"] else
                f"{pct(p['all'], 0)}\\,\\% of the {count(p['n'], 'case')} it called {cause_name(cause)}s")

    def found(cause):  # recall; null where nothing of that kind was planted among the errors
        r = s["recall"][cause]
        return (f"no planted {cause_name(cause)}s, none being among the errors" if r is None else
                f"{pct(r, 0)}\\,\\% of the planted {cause_name(cause)}s")
    commit = f" at commit \\texttt{{{tex_escape(str(score['git_commit'])[:12])}}}" if score["git_commit"] else ""
    text = (f"Scored on planted causes (make planted{commit}: the {count(n, 'error')} of a model trained on "
            f"synthetic images with causes planted), the rule was right for {right('label_error')} and "
            f"{right('context')}; it found {and_list([found(c) for c in s['recall']])}")
    alike = s["precision"]["lookalike"]
    if alike["n"]:  # the errors between unplanted shapes are no one's truth: say so, not hide the share
        text += (f"; of the {count(alike['n'], 'case')} it called look-alikes, {pct(alike['all'], 0)}\\,\\% "
                 "were the planted pair, the others errors that nothing was planted on")
    ctl = score["control"]
    if ctl is None:
        return text + "; no control model was scored."
    rate = "n/a" if ctl["rate"] is None else f"{pct(ctl['rate'], 0)}\\,\\%"
    return (text + f"; on a control model with nothing planted it called {ctl['false_alarms']} of its "
            f"{count(ctl['n'], 'error')} a label error or a context cue (false alarms: {rate}).")


def errors_sentence(failures):
    summary = failures["summary"]
    levels = ", ".join(f"{n} at confidence $\\geq$ {t}"
                       for t, n in sorted(summary["errors_at_confidence"].items(), key=lambda kv: float(kv[0])))
    s = f"The baseline misclassifies {summary['n_errors']} of {count(summary['n_test'], 'test image')} ({levels})"
    if summary["confused_pairs"]:
        top = summary["confused_pairs"][0]
        s += (f"; its most frequent confusion is {tex_escape(top['true_name'])} $\\to$ "
              f"{tex_escape(top['pred_name'])} ({count(top['count'], 'image')})")
    s += "."
    if summary["share_within_superclass"] is not None:
        s += (f" {pct(summary['share_within_superclass'], 1)}\\,\\% of its errors "
              f"({summary['errors_within_superclass']}) "
              "stay within the true class's superclass: fine-grained confusions between related classes.")
    return s


def coarse_maps_sentence(gradcam, layer_tex):
    """How coarse the explained layer's maps are, from the map and image sizes gradcam.py measured."""
    ref = gradcam["reference"]
    if ref is None or ref["map_size"] is None:  # an older gradcam.json did not measure them
        return (f"Grad-CAM maps are coarse (layer \\texttt{{{layer_tex}}}, upsampled to the image) "
                "and scaled per image")
    (h, w), (H, W) = ref["map_size"], ref["image_size"]
    s = (f"Grad-CAM maps at \\texttt{{{layer_tex}}} are {h}$\\times${w}, upsampled to {H}$\\times${W}")
    if h <= 4 and w <= 4:
        s += (f": each cell covers {H // h}$\\times${W // w} pixels, so these maps can tell only which "
              "region of the image held the evidence, not which object part")
    return s + "; they are scaled per image"


def randomisation_sentence(faith):
    """Adebayo et al.'s sanity check from both models' faithfulness.json; '' without them (faith is
    None) or where a correlation is undefined."""
    if faith is None:
        return ""
    b, i = faith["baseline"]["randomisation"], faith["improved"]["randomisation"]
    if not (b["spearman_mean"] and i["spearman_mean"]) or None in b["spearman_mean"] + i["spearman_mean"]:
        return ""
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
    ref = gradcam["reference"]
    if ref is None or not ref["n"]:
        return ""
    s = (f"For reference, over {ref['n']} correctly classified test images of a fixed sample, "
         f"{pct(ref['empty_share'], 0)}\\,\\% of the predicted-class maps are empty")
    q = ref["centre_mass_quartiles"]
    if q:
        s += f" and the middle half put {pct(q[0], 0)}--{pct(q[2], 0)}\\,\\% of their mass in the centre"
    if ref["peak_in_box_rate"] is not None:
        s += f"; their peak lies on the object for {pct(ref['peak_in_box_rate'], 0)}\\,\\%"
    return s + "."


def training_curves_sentence(cfg):
    mixed = [w for w, on in (("CutMix-ed batches", cfg.get("cutmix_prob")),
                             ("smoothed labels", cfg.get("label_smoothing"))) if on]
    if not mixed:
        return ""
    return (f"Its training loss and accuracy are measured on {' and '.join(mixed)}, so they are not "
            "comparable with its test curves, which use plain images and labels.")


def conclusion_sentence(comparison, name):
    d = comparison["accuracy_difference"]
    effect = "raised" if d > 0 else "lowered" if d < 0 else "did not change"
    sig = "significant" if comparison["mcnemar_p"] < 0.05 else "not significant"
    t, confident_b, confident_i = at_threshold(comparison)
    hc = "reduced" if confident_i < confident_b else "increased" if confident_i > confident_b else "left unchanged"
    capped = smoothing_cap(comparison, t)
    return (f"In this study, {name} {effect} test accuracy from {pct(comparison['accuracy_baseline'])}\\,\\% to "
            f"{pct(comparison['accuracy_improved'])}\\,\\% ({signed(d)} points, 95\\,\\% interval "
            f"[{signed(comparison['bootstrap_ci95'][0])}, {signed(comparison['bootstrap_ci95'][1])}]; McNemar "
            f"{p_tex(comparison['mcnemar_p'])}, {sig} at the 0.05 level) and {hc} the wrong predictions made "
            f"with confidence $\\geq$ {t:g} ({confident_b} $\\to$ {confident_i})"
            + (f", a threshold near the {capped[1]:.2f} that label smoothing trains the improved "
               "model to reach." if capped else "."))


#### The recipe checks: judged by judgements.py (stored in comparison.json), worded here
# Each returns (a warning or None, the numbers of a check passed or None).

def published_gain_words(check):
    if check is None:  # a sentence of its own: it is a check not made, not one passed
        return ("No published range for this improvement on this dataset is on record, so the size "
                "of the gain is not checked against the literature."), None
    gain, lo, hi = signed(check["gain"]), check["low"], check["high"]
    published = f"+{lo:.1f} to +{hi:.1f} points published for CutMix on {check['dataset']} ({check['source']})"
    if check["far_above"]:
        return (f"The gain of {gain} points is far above the {published}: a weak baseline may explain "
                "much of it."), None
    return None, f"the gain of {gain} points compares with {published}"


def fit_words(fit):
    """The baseline under-fitting (too short a schedule), over-fitting (near 100\\,\\% on its
    training batches while its test loss rises), or neither, from its training curve."""
    if fit is None:
        return None, None
    acc = f"{pct(fit['train_acc'], 1)}\\,\\%"
    if fit["verdict"] == "under":
        return (f"The baseline ends at only {acc} training accuracy after {fit['epochs']} epochs: it "
                "under-fits, and a regulariser such as the improvement is expected to cost accuracy until "
                "training is long enough to fit the data."), None
    if fit["verdict"] == "over":
        return (f"The baseline ends at {acc} training accuracy while its test loss rose from "
                f"{fit['lowest_test_loss']:.3f} (epoch {fit['lowest_epoch']}) to {fit['final_test_loss']:.3f}: "
                "it over-fits, and the improvement may act as the regulariser the baseline lacks."), None
    return None, (f"the baseline ends at {acc} training accuracy with a final test loss of "
                  f"{fit['final_test_loss']:.3f} (lowest {fit['lowest_test_loss']:.3f})")


def best_final_words(check, role):
    if check is None:
        return None, None
    if check["flagged"]:
        return (f"The {role}'s best-on-test accuracy ({pct(check['best'])}\\,\\% at epoch "
                f"{check['best_epoch']}) is {100 * check['gap']:.2f} points above its final one: which "
                "epoch is reported matters."), None
    return None, f"{100 * check['gap']:.2f}"


def ece_words(check, role):
    if check["high"]:
        return f"The {role}'s confidence is far from its accuracy (ECE {pct(check['ece'], 1)}\\,\\%).", None
    return None, pct(check["ece"], 1)


ROLES = (("baseline", "baseline"), ("improved", "improved model"))


def recipe_check_sentence(checks):
    """comparison.json's recipe_checks in words: warnings first, then the numbers of the checks
    passed (the gain against the literature, over-fitting, best-on-test against final, calibration)."""
    found = [published_gain_words(checks["published_gain"]), fit_words(checks["fit"])]
    gaps = [best_final_words(checks["best_final"][side], role) for side, role in ROLES]
    eces = [ece_words(checks["ece"][side], role) for side, role in ROLES]
    warnings = [w for w, _ in found + gaps + eces if w]
    notes = [n for _, n in found if n]
    if all(n for _, n in gaps):
        notes.append(f"best-on-test and final accuracies differ by {gaps[0][1]} and {gaps[1][1]} points")
    if all(n for _, n in eces):
        notes.append(f"ECE is {eces[0][1]}\\,\\% and {eces[1][1]}\\,\\%")
    checked = f"Checks of the recipe: {and_list(notes)}." if notes else ""
    return " ".join(warnings + [checked]).strip()


def labels_limitation(config):
    if re.match(r"CIFAR-100( |$)", dataset_name(config["dataset"])):  # a figure for CIFAR-100's test set
        return ("High-confidence errors may include mislabelled images: about 5.85\\,\\% of the CIFAR-100 "
                "test set (585 images) is mislabelled by the majority vote of human reviewers (Northcutt et "
                "al., 2021), so a confident failure case is worth checking by eye.")
    return ("High-confidence errors may include mislabelled or ambiguous test images; a confident failure "
            "case is worth checking by eye before the model is blamed.")


#### What a run's training was, or what an imported model leaves unknown

def training_sentence(cfg, metrics, role):
    """The paragraph on one model's training: evaluate.py's accuracy first (float32, the number
    every later section uses), then what train.py saw per epoch; for an imported model, what is
    known of its weights and that its recipe, curves and time are not."""
    acc = f"{pct(metrics['test_accuracy'])}\\,\\% test accuracy (top-5 {pct(metrics['top5_accuracy'])}\\,\\%)"
    imported = cfg.get("imported")
    if imported:
        return (f"{role} was trained elsewhere and imported from \\texttt{{{tex_escape(Path(imported['weights']).name)}}} "
                f"(SHA-256 \\texttt{{{imported['sha256'][:12]}}}, {tex_escape(imported['found'])}; input "
                f"normalisation: {tex_escape(imported['normalisation'])}): its training recipe, learning "
                f"curves and training time are unknown here. On the test set it reaches {acc}.")
    which = SHORT_CHECKPOINT.get(metrics.get("checkpoint"), "final")
    s = (f"{role} reaches {acc} with its {which} weights (epoch {metrics.get('epoch')} of {cfg['epochs']}); "
         f"during training its best test accuracy, {pct(cfg['best_test_accuracy'])}\\,\\%, came at epoch "
         f"{cfg['best_epoch']}.")
    if cfg.get("precision") == "bf16 autocast" and metrics.get("checkpoint") == "last" \
            and round(cfg["final_test_accuracy"], 4) != round(metrics["test_accuracy"], 4):
        s += (f" Training measured the test set under bf16 autocast ({pct(cfg['final_test_accuracy'])}\\,\\% "
              "at the last epoch), evaluation in float32.")
    return s + (f" Training and testing took {seconds_text(cfg.get('wall_seconds'))} on "
                f"{tex_escape(cfg.get('device_name', 'n/a'))}, at {cfg.get('train_images_per_second', 0):.0f} "
                "training images/s.")


def trained_texts(data):
    """The sentences on how two models trained here differ and what that leaves open."""
    comparison, base_config, impr_config = data["comparison"], data["base_config"], data["impr_config"]
    name = improvement_name(comparison["changed_values"])
    used = {data["base_metrics"]["checkpoint"], data["impr_metrics"]["checkpoint"]}
    k, changed = len(comparison["changed_values"]), changed_list(comparison["changed_values"])
    seeds = data["seeds"]
    several = seeds is not None and len(seeds["seeds"]) > 1
    return {
        "ImprovementName": name,
        "ProseStudyLead": (f"We train {setting_text('arch', base_config['arch'])} from scratch on "
                           f"{dataset_name(base_config['dataset'], base_config.get('num_classes'))} twice, as a "
                           f"baseline and with {name},"),
        "ProseSetupLead": (f"Both runs train on the same {base_config['n_train']} images and are tested on the "
                           f"same {comparison['n_test']} images of {base_config['num_classes']} classes, with the "
                           "settings of Table~\\ref{tab:config}; the shaded rows are the settings that differ."),
        "ProseImprLead": (f"The improved model differs from the baseline in the shaded rows of "
                          f"Table~\\ref{{tab:config}} ({changed})."),
        "ProseCheckpoint": checkpoint_sentence(data["base_metrics"], data["impr_metrics"],
                                               base_config, impr_config),
        "ProseSeeds": seeds_sentence(base_config, impr_config, seeds),
        "ProseChanged": changed_sentence(comparison),
        "AbstractSeeds": (f"Each model was trained with {len(seeds['seeds'])} seeds; the analysis below uses "
                          f"seed {base_config.get('seed')}." if several else "Each model was trained once (1 seed)."),
        "ProseCode": code_sentence(base_config, impr_config),
        "ProseConclusion": conclusion_sentence(comparison, name),
        "LimitRecipe": recipe_check_sentence(comparison["recipe_checks"]),
        "LimitSeeds": (f"{len(seeds['seeds'])} training runs per model; the figures, cases and tests "
                       f"analyse seed {base_config.get('seed')} only." if several else
                       f"One training run per model (seed {base_config.get('seed')}"
                       + ("" if base_config.get("seed") == impr_config.get("seed") else f" and {impr_config.get('seed')}")
                       + "): the spread between training runs is not measured, and a difference "
                         "no larger than that spread would be invisible here."),
        "LimitCheckpoint": ("Final-epoch weights for both models: no choice was made on the test set."
                            if used == {"last"}
                            else "Best-on-test weights: the epoch was chosen on the test set, so the "
                                 "accuracies are optimistic." if used == {"best"}
                            else "The two models were evaluated with different checkpoints."),
        "LimitChanged": (f"{changed[:1].upper()}{changed[1:]} were changed together; the ablation "
                         "separates them on one seed." if k > 1 and data["ablation"] else
                         f"{changed[:1].upper()}{changed[1:]} were changed together, so this comparison "
                         "cannot separate their effects." if k > 1 else
                         f"Only {changed} changed." if k == 1 else
                         "The two configurations are identical."),
    }


def imported_texts(data):
    """The same sentences when either model was imported: they say what this study cannot know
    instead of printing empty or invented values."""
    comparison, base_config, impr_config = data["comparison"], data["base_config"], data["impr_config"]
    sides = (("baseline", base_config), ("improved model", impr_config))
    which = and_list([role for role, config in sides if config.get("imported")])
    both = base_config.get("imported") and impr_config.get("imported")
    subject = "both models were" if both else f"the {which} was"
    whose = "Both models'" if both else f"The {which}'s"
    theirs = "they are" if both else f"the {which}'s are"
    commit = tex_escape(str(comparison["git_commit"] or "unknown")[:12])
    checks = comparison["recipe_checks"]
    return {
        "ImprovementName": "an improved model, both imported" if both else f"an improved model ({which} imported)",
        "ProseStudyLead": (f"We take a baseline and an improved {setting_text('arch', base_config['arch'])} for "
                           f"{dataset_name(base_config['dataset'], base_config.get('num_classes'))} ({subject} trained "
                           f"elsewhere and imported),"),
        "ProseSetupLead": (f"Both models are tested on the same {base_config['n_test']} images of "
                           f"{base_config['num_classes']} classes; {subject} trained elsewhere, so Table~\\ref{{tab:config}} "
                           "shows what is known of them and no setting can be named as their difference."),
        "ProseImprLead": "",
        "ProseCheckpoint": (f"Imported weights are evaluated as given: whether {theirs} final or "
                            "best-on-test checkpoints is not known here."),
        "ProseSeeds": "", "AbstractSeeds": "",
        "ProseChanged": ("What differs between the two models' training is unknown to this study: the "
                         "comparison below measures how they differ, not why."),
        "ProseCode": (f"This analysis ran at commit \\texttt{{{commit}}}; the training code of the imported "
                      f"{'models' if both else which} is unknown."),
        "ProseConclusion": conclusion_sentence(comparison, "replacing the baseline by the improved model"),
        "LimitRecipe": " ".join(
            [w for w, _ in (ece_words(checks["ece"][side], role) for side, role in ROLES) if w]
            + ["Checks of the training recipe (the gain against published results, under- and "
               "over-fitting, best-on-test against final accuracy) need the recipe and learning curves "
               "that imported models lack."]),
        "LimitSeeds": ("One model per side: the spread between training runs is not measured, and a "
                       "difference no larger than that spread would be invisible here."),
        "LimitCheckpoint": (f"{whose} weights were imported: whether their epoch was chosen on the test set, "
                            "which would make the accuracy optimistic, is unknown."),
        "LimitChanged": ("The models' training recipes are unknown, so the differences measured here "
                         "cannot be attributed to a change of method."),
    }


def prose(data):
    """Every text macro of the report: those that read the same for any two models, then those on
    how the models were trained, from one of two branches (trained here, or imported)."""
    comparison, failures = data["comparison"], data["failures"]
    base_config, impr_config = data["base_config"], data["impr_config"]
    imported = bool(base_config.get("imported") or impr_config.get("imported"))
    return {
        "ProseBaseTraining": training_sentence(base_config, data["base_metrics"], "The baseline"),
        "ProseImprTraining": training_sentence(impr_config, data["impr_metrics"],
                                               "The improved model" if impr_config.get("imported") else "It"),
        "ProseAccuracy": accuracy_sentence(comparison), "ProseSignificance": significance_sentence(comparison),
        "ProseHighConf": high_confidence_sentence(comparison), "ProseCalibration": calibration_sentence(comparison),
        "ProseCorruptions": corruptions_sentence(comparison),
        "ProseAblation": ablation_sentence(data["ablation"]),
        "ProseSelection": selection_sentence(failures),
        "ProsePerClass": per_class_sentence(comparison), "ProseCases": cases_sentence(comparison),
        "ProseErrors": errors_sentence(failures),
        "ProseCauseScore": cause_score_sentence(data["score"]),
        "ProseCausesRevisited": causes_recheck_sentence(data["causes"], comparison),
        "ProseGradcamReference": gradcam_reference_sentence(data["gradcam"]),
        "ProseCoarseMaps": coarse_maps_sentence(data["gradcam"], tex_escape(comparison["gradcam_layer"] or "")),
        "ProseRandomisation": randomisation_sentence(data["faithfulness"]),
        "ProseImprCurves": training_curves_sentence(impr_config), "LimitLabels": labels_limitation(base_config),
        **(imported_texts(data) if imported else trained_texts(data)),
    }
