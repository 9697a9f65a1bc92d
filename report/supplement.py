"""Build a study's supplement PDF: what the 6-page report has no room for, from the JSON results.

    python supplement.py --study runs/smoke      # writes runs/smoke/supplement.pdf
    python supplement.py --study runs/smoke --planted-score runs/planted/score.json

Faithfulness of both models' Grad-CAM maps (faithfulness.py), the corruption grid per corruption,
possible label errors (compare.py), every number behind each failure case's stated cause (causes.py)
with the cause rule's score on planted causes (make planted, --planted-score), and make seeds / make
ablation results when they exist.
Sources go to <out dir>/report/ beside the main report's: supplement.tex (a copy of
report/supplement.tex) and supplement-body.tex (every number and sentence, generated here);
the same inputs give the same PDF bytes, as for report.py. study.py reads and checks the inputs and
compiles the PDF for both.
"""
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: common.py is in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import UserError, arg_parser, atomic_write, cli_guard
from contract import checkpoint_words
from judgements import SMALL_CHANGES
from prose import cause_name, cause_score_sentence, cause_words, changed_list, changed_thresholds
from study import (build_pdf, load_causes, load_config, load_extras, load_json, load_score, require_file, source_date,
                   write_text)
from tex import and_list, count, p_tex, pct, signed, tex_escape

TEMPLATE = Path(__file__).resolve().parent / "supplement.tex"
MODELS = ("baseline", "improved")


def auc(stats):
    return f"{stats['mean']:.3f} $\\pm$ {stats['std']:.3f}"


def weights_words(configs, faith):
    """Which weights the maps explain: one phrase when both models agree, else one per model."""
    words = {m: checkpoint_words(configs[m], faith[m]["checkpoint"]) for m in MODELS}
    if len(set(words.values())) == 1:
        return words[MODELS[0]]
    return "; ".join(f"{m}: {w}" for m, w in words.items())


def faithfulness_section(study, faith, configs, report_dir):
    rows = []
    for model in MODELS:
        f, s = faith[model], faith[model]["sample"]
        rows.append(f"{model} & {auc(s['gradcam']['deletion_auc'])} & {auc(s['random']['deletion_auc'])} & "
                    f"{pct(s['gradcam_beats_random']['deletion'], 0)}\\,\\% & {auc(s['gradcam']['insertion_auc'])} & "
                    f"{auc(s['random']['insertion_auc'])} & {pct(s['gradcam_beats_random']['insertion'], 0)}\\,\\% \\\\")
    f = faith["baseline"]
    figures = "\n".join(  # full width: each figure has a deletion and an insertion panel
        f"\\begin{{center}}\\includegraphics[width=0.9\\linewidth]"
        f"{{{os.path.relpath(study / m / 'faithfulness.png', report_dir)}}}\\end{{center}}" for m in MODELS)
    return rf"""\section{{Are the Grad-CAM maps faithful?}}
Deletion and insertion curves (Petsiuk et al., 2018) on {f['sample']['n']} test images, for each model's
predicted class, with Grad-CAM at \texttt{{{tex_escape(f['layer'])}}} ({tex_escape(weights_words(configs, faith))}):
the pixels a map ranks highest are replaced first, in {f['steps']} steps, by the {tex_escape(f['deletion_baseline'])}
(deletion: lower area under the curve is better) or put back first into a copy blurred with a
{tex_escape(f['insertion_start'])} (insertion: higher is better). A random pixel order is the yardstick;
``better'' is the share of images where Grad-CAM beats it. The right-hand panels are the
model-parameter randomisation test (Adebayo et al., 2018) on the first {f['randomisation']['n']} of these
images: the network's parameterised modules are re-initialised from the head down, cumulatively, and
each time the maps for the trained model's predicted class are compared with the trained maps by
Spearman's rank correlation; maps that depend on what the network learned fall towards 0.

\begin{{center}}\small
\begin{{tabular}}{{lllrlll}}\toprule
 & \multicolumn{{3}}{{c}}{{deletion AUC}} & \multicolumn{{3}}{{c}}{{insertion AUC}} \\
model & Grad-CAM & random & better & Grad-CAM & random & better \\\midrule
{chr(10).join(rows)}
\bottomrule\end{{tabular}}
\end{{center}}
{figures}
"""


def corruption_section(comparison):
    c = comparison["corruptions"]
    if c is None:
        return "\\section{Corruptions}\nNo corruption grids: run corruptions.py on both models.\n"
    rows = "\n".join(f"{tex_escape(r['name'].replace('_', ' '))} & {pct(r['baseline'])} & {pct(r['improved'])} & "
                     f"{signed(r['difference'])} \\\\" for r in c["per_corruption"])
    mce = c["mean_corruption_error"]
    return rf"""\section{{Accuracy under each corruption}}
Mean accuracy over severities {', '.join(map(str, c['severities']))} on {c['n']} test images (\%); the mean
corruption error over all cells is {pct(mce['baseline'])}\,\% for the baseline and {pct(mce['improved'])}\,\%
for the improved model.

\begin{{center}}\small
\begin{{tabular}}{{lrrr}}\toprule
corruption & baseline & improved & change (points) \\\midrule
{rows}
\bottomrule\end{{tabular}}
\end{{center}}
"""


def suspects_rule_text(sus):
    """compare.py's confident-learning suspects: what was flagged, and each model's thresholds."""
    if sus["count"] == 0:
        return ("No test image is flagged by both models for the same class other than its label "
                "(confident learning's per-class thresholds, Northcutt et al., 2021).\n")
    b, i = sus["rule"]["baseline"], sus["rule"]["improved"]
    return (f"On {sus['count']} test images ({pct(sus['share'])}\\,\\%) both models flag the same class "
            "other than the label by confident learning (Northcutt et al., 2021): each model's probability "
            "of that class reaches the model's own threshold for it, its mean probability of the class on the "
            f"test images labelled with it (thresholds {b['min']:.3g} to {b['max']:.3g} for the baseline, "
            f"{i['min']:.3g} to {i['max']:.3g} for the improved model). Some may be mislabelled, others "
            "shared mistakes: possible label errors, to check by eye, not a verdict.\n")


def suspects_fixed_threshold_text(sus):
    """A comparison.json written before the confident-learning rule: one fixed confidence."""
    if sus["count"] == 0:
        return (f"On no test image are both models at least {sus['threshold']:g} sure of the same class "
                "other than the label.\n")
    return (f"On {sus['count']} test images ({pct(sus['share'])}\\,\\%) both models are at least "
            f"{sus['threshold']:g} sure of the same class other than the label. Some may be mislabelled, "
            "others shared mistakes: they are a list to check by eye, not a verdict.\n")


def suspects_section(comparison, study, report_dir):
    sus = comparison["label_error_suspects"]
    if sus is None:
        return ""
    text = "\\section{Possible label errors}\n" + (suspects_rule_text(sus) if sus["rule"] is not None
                                                   else suspects_fixed_threshold_text(sus))
    if sus["figure"]:
        path = os.path.relpath(study / "compare" / f"{sus['figure']}.png", report_dir)
        text += f"\n\\begin{{center}}\\includegraphics[width=\\linewidth]{{{path}}}\\end{{center}}\n"
    return text


def seeds_and_ablation_section(seeds, ablation):
    out = ""
    if seeds:
        out += ("\\section{Seeds}\n\\begin{center}\\small\\begin{tabular}{lrrr}\\toprule\nseed & baseline & "
                "improved & difference (points) \\\\\\midrule\n")
        for k, s in enumerate(seeds["seeds"]):
            out += (f"{s} & {pct(seeds['baseline']['values'][k])} & {pct(seeds['improved']['values'][k])} & "
                    f"{signed(seeds['difference']['values'][k])} \\\\\n")
        std = seeds["difference"]["std"]
        out += (f"\\midrule mean & {pct(seeds['baseline']['mean'])} & {pct(seeds['improved']['mean'])} & "
                f"{signed(seeds['difference']['mean'])}" + (f" $\\pm$ {pct(std)}" if std is not None else "")
                + " \\\\\\bottomrule\\end{tabular}\\end{center}\n")
    if ablation:
        out += ("\\section{Ablation}\nEach run against the baseline on the same seed.\n\\begin{center}\\small"
                "\\begin{tabular}{lrrrrl}\\toprule\nchanges & accuracy (\\%) & change (points) & corrected & "
                "worsened & McNemar \\\\\\midrule\n")
        for r in ablation:
            out += (f"{changed_list(r['changed'])} & {pct(r['accuracy'])} & {signed(r['difference'])} & "
                    f"{r['corrected']} & {r['worsened']} & {p_tex(r['mcnemar_p'])} \\\\\n")
        out += "\\bottomrule\\end{tabular}\\end{center}\n"
    return out


#### The stated causes: every number causes.py measured, and the rule's planted score

# What each of causes.py's interventions does to the image, in its order in causes.json.
INTERVENTION_WORDS = {
    "original": "the image as tested", "remove_border": "border removed (centre kept)",
    "remove_marked": "marked region removed", "keep_marked": "marked region alone",
    "remove_elsewhere": "a region as large removed elsewhere", "keep_true_marked": "true-class region alone",
    "flip": "flipped left-right", "shift_left": "shifted left", "shift_right": "shifted right",
    "shift_up": "shifted up", "shift_down": "shifted down"}


def class_cell(c, pred, classes):
    """A class name, bold where it is the case's predicted class (as in the causes figure)."""
    name = tex_escape(classes[c])
    return rf"\textbf{{{name}}}" if c == pred else name


def case_tables(stated, classes):
    """One case's interventions (p of its predicted and true class, and the class then preferred)
    beside its nearest training images (label, cosine similarity)."""
    pred = stated["pred"]
    probes = "\n".join(f"{INTERVENTION_WORDS.get(name, tex_escape(name))} & {p['p_pred']:.3f} & {p['p_true']:.3f} & "
                       f"{class_cell(p['top'], pred, classes)} \\\\"
                       for name, p in stated["evidence"]["interventions"].items())
    nb = stated["evidence"]["neighbours"]
    near = "\n".join(f"{j + 1} & {class_cell(c, pred, classes)} & {s:.3f} \\\\"
                     for j, (c, s) in enumerate(zip(nb["labels"], nb["similarity"])))
    return rf"""\begin{{minipage}}[t]{{0.6\linewidth}}\vspace{{0pt}}\centering\footnotesize
\begin{{tabular}}{{lrrl}}\toprule
intervention & $p$(pred.) & $p$(true) & predicted \\\midrule
{probes}
\bottomrule\end{{tabular}}
\end{{minipage}}\hfill
\begin{{minipage}}[t]{{0.36\linewidth}}\vspace{{0pt}}\centering\footnotesize
\begin{{tabular}}{{rlr}}\toprule
\# & training label & similarity \\\midrule
{near}
\bottomrule\end{{tabular}}
\end{{minipage}}
"""


def case_section(stated, classes):
    """One case: its stated cause in causes.py's words, the numbers the rule weighed, its tables."""
    ev, nb = stated["evidence"], stated["evidence"]["neighbours"]
    pair = f"{tex_escape(stated['true_name'])} $\\to$ {tex_escape(stated['pred_name'])}"
    moved = ev["moved_by_small_changes"]
    return (f"\\subsection*{{\\#{stated['index']}: {pair} (confidence {stated['confidence']:.2f})}}\n"
            f"{cause_words(stated)}\n\nThe pair {pair} has {count(ev['pair_errors'], 'test error')}, "
            f"{ev['pair_lift']:.1f} times an even spread of the true class's errors; {moved} of the "
            f"{len(SMALL_CHANGES)} small changes (flip, shifts) {'moves' if moved == 1 else 'move'} the prediction; "
            f"{round(nb['pred_share'] * nb['k'])} of the {nb['k']} nearest training images are labelled with "
            f"the predicted class, {round(nb['true_share'] * nb['k'])} with the true one.\n\n"
            + case_tables(stated, classes))


def planted_table(score):
    """make planted's confusion table of planted against stated causes, with recall per row."""
    s = score["planted"]
    stated = list(next(iter(s["table"].values())))
    head = " & ".join(tex_escape(cause_name(c)) for c in stated)
    rows = "\n".join(f"{tex_escape(cause_name(p))} & " + " & ".join(str(row.get(c, 0)) for c in stated)
                     + f" & {'--' if s['recall'].get(p) is None else pct(s['recall'][p], 0)} \\\\"
                     for p, row in s["table"].items())
    precision = and_list([f"{tex_escape(cause_name(c))} " + (f"{pct(p['all'], 0)}\\,\\% of {p['n']}" if p["n"]
                                                           else "never stated") for c, p in s["precision"].items()])
    return (f"\\begin{{center}}\\small\\begin{{tabular}}{{l{'r' * len(stated)}r}}\\toprule\n"
            f"planted $\\backslash$ stated & {head} & recall (\\%) \\\\\\midrule\n{rows}\n"
            f"\\bottomrule\\end{{tabular}}\\end{{center}}\nPrecision of each stated cause (share of the cases "
            f"stated so whose planted cause it is): {precision}.\n")


def causes_section(study, causes, classes, score, report_dir):
    figure = os.path.relpath(study / "baseline" / "causes.png", report_dir)
    text = (r"\section{The stated cause of each failure case}" "\n"
            r"For each of the baseline's failure cases, \texttt{causes.py} measured the probabilities of the "
            "predicted and the true class under each intervention (a removed region is filled with a blurred "
            "copy of the image; the marked region holds the pixels that the predicted-class Grad-CAM map "
            "ranks highest, the true-class region those of the true-class map), and found its nearest "
            "training images by cosine similarity of the baseline's penultimate features. Bold: the "
            "predicted class.\n\n"
            f"\\begin{{center}}\\includegraphics[width=\\linewidth]{{{figure}}}\\end{{center}}\n")
    text += "".join(case_section(c, classes) for c in causes["cases"])
    text += "\\subsection*{The rule on planted causes}\n" + cause_score_sentence(score) + "\n"
    if score is not None and not changed_thresholds(score):
        text += planted_table(score)
    return text


def run(args):
    study = Path(args.study)
    out = Path(args.out) if args.out else study / "supplement.pdf"
    paths = {"comparison": study / "compare" / "comparison.json",
             **{m: study / m / "faithfulness.json" for m in MODELS},
             "failures": study / "baseline" / "failures.json", "causes": study / "baseline" / "causes.json"}
    for path in [*paths.values(), *(study / m / "faithfulness.png" for m in MODELS), study / "baseline" / "causes.png"]:
        require_file(path, study)
    # Everything is read and checked (study.py) before anything is written.
    comparison = load_json(paths["comparison"], study, "comparison")
    faith = {m: load_json(paths[m], study, "faithfulness results") for m in MODELS}
    configs = {m: load_config(study / m, study) for m in MODELS}
    extra = load_extras(study, paths)
    failures = load_json(paths["failures"], study, "failures")
    causes = load_causes(study / "baseline", failures["cases"], study)  # checked to be failures.json's cases
    score = load_score(args.planted_score, paths)
    report_dir = out.parent / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    body = (faithfulness_section(study.resolve(), faith, configs, report_dir.resolve())
            + causes_section(study.resolve(), causes, configs["baseline"]["classes"], score, report_dir.resolve())
            + corruption_section(comparison) + suspects_section(comparison, study.resolve(), report_dir.resolve())
            + seeds_and_ablation_section(extra["seeds"], extra["ablation"]))
    if not TEMPLATE.is_file():
        raise UserError(f"the LaTeX source {TEMPLATE} is missing; restore it from git")
    write_text(report_dir / "supplement-body.tex", body)
    write_text(report_dir / "supplement.tex",
               TEMPLATE.read_text().replace("STUDYNAME", tex_escape(study.name)))
    pdf, pages = build_pdf(report_dir, source_date(paths), name="supplement")
    pdf_bytes = pdf.read_bytes()
    atomic_write(out, lambda f: f.write(pdf_bytes))
    print(f"{out}: supplement, {pages} pages (sources in {report_dir})")
    return {"pdf": str(out), "pages": pages}


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--study", required=True, help="study folder filled by make study")
    p.add_argument("--out", default=None, help="the PDF (default: <study>/supplement.pdf)")
    p.add_argument("--planted-score", default=None, help="make planted's score of the cause rule "
                   "(runs/planted/score.json): its whole table")
    return p


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
