"""Build a study's PDF report from its JSON results: generated LaTeX macros, tables and prose
(the sentences come from prose.py; the inputs are read and checked, and the PDF compiled, by study.py).

    python report/report.py --study runs/resnet18-cifar100 --out runs/resnet18-cifar100/report.pdf
    python report/report.py --study runs/smoke --planted-score runs/planted/score.json

Needs the study folder that `make study` fills (baseline/, improved/, compare/), pdflatex and
latexmk; with --planted-score, make planted's score of the cause rule, which it quotes. Writes
<out dir>/report/: macros.tex (every number and every result-dependent sentence as a \\newcommand),
table-*.tex, figures.txt (the figures the report includes), report.tex (a copy of
report/report.tex) and build/ (latexmk's output, with the .fls recorder file); then copies
build/report.pdf to --out. The same inputs give the same PDF bytes (SOURCE_DATE_EPOCH).
"""
import os
import re
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: common.py is in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import UserError, arg_parser, at_least, atomic_write, cli_guard
from prose import SHORT_CHECKPOINT, at_threshold, cause_words, changed_list, checkpoint_name, code_resumes, prose
from settings import SETTINGS, label as setting_label, shown as setting_shown
from study import (build_pdf, load_causes, load_config, load_extras, load_gradcam, load_json, load_metrics,
                   load_score, require_file, source_date, write_text)
from tex import dataset_name, p_tex, pct, seconds_text, setting_text, signed, tex_escape

TEMPLATE = Path(__file__).resolve().parent / "report.tex"
MAX_PAGES = 6
# Figure sizes tried in turn until the report fits MAX_PAGES; below 0.85 the smallest labels
# would print under 6 pt.
FIGURE_SCALES = (1.0, 0.85)
# Every input by key, as a path in the study folder; contract.WRITERS names the script that writes
# each, for the sentence that a missing or damaged one stops the build with.
INPUTS = {
    "base_config": "baseline/config.json", "base_curves": "baseline/curves.png",
    "base_metrics": "baseline/metrics.json",
    "impr_config": "improved/config.json", "impr_curves": "improved/curves.png",
    "impr_metrics": "improved/metrics.json",
    "failures": "baseline/failures.json", "causes": "baseline/causes.json",
    "causes_png": "baseline/causes.png", "gradcam_png": "baseline/gradcam.png",
    "gradcam": "baseline/gradcam.json", "comparison": "compare/comparison.json",
    **{f"cmp_{s}": f"compare/{s}.pdf" for s in ("confidence", "high_confidence", "per_class", "gradcam_compare")},
}
RUNS = {"base": "baseline", "impr": "improved"}  # the key prefixes of INPUTS and of the loaded data
FIGURE_MACROS = {"FigBaseCurves": "base_curves", "FigImprCurves": "impr_curves",
                 "FigCauses": "causes_png", "FigGradcam": "gradcam_png",
                 "FigConfidence": "cmp_confidence", "FigHighConf": "cmp_high_confidence",
                 "FigPerClass": "cmp_per_class", "FigGradcamCompare": "cmp_gradcam_compare"}
# compare.py figures that report.tex places only when comparison.json lists them (\ifHas<Name>).
OPTIONAL_FIGURES = {"reliability": "Reliability", "corruptions": "Corruptions"}


#### Loading

def load_study(study, planted_score=None):
    """Paths of every input and the JSON files' contents, each checked by study.py: a missing or
    damaged file stops the build with a sentence naming the script that writes it. planted_score:
    make planted's score.json, or None (the report then says that the cause rule is not scored)."""
    study = Path(study)
    if not study.is_dir():
        raise UserError(f"study folder {study} does not exist; run make study STUDY=<name> first")
    paths = {key: study / rel for key, rel in INPUTS.items()}
    data = {}
    for side, run in RUNS.items():
        data[f"{side}_config"] = load_config(study / run, study)
        if data[f"{side}_config"].get("imported"):  # no training history: curves absent, not missing
            paths.pop(f"{side}_curves")
    for path in paths.values():
        require_file(path, study)
    data.update({f"{side}_metrics": load_metrics(study / run, study) for side, run in RUNS.items()})
    data["failures"] = load_json(paths["failures"], study, "failures")
    data["comparison"] = comparison = load_json(paths["comparison"], study, "comparison")
    for stem in comparison["figures"] or []:
        if stem in OPTIONAL_FIGURES:
            paths[f"cmp_{stem}"] = study / "compare" / f"{stem}.pdf"
            require_file(paths[f"cmp_{stem}"], study)
        elif f"cmp_{stem}" not in paths:
            print(f"note: comparison.json lists the figure {stem}, which report.tex does not place",
                  file=sys.stderr)
    data.update(load_extras(study, paths))
    # Read last: contract.read_gradcam and read_causes check that they explain failures.json's cases.
    data["gradcam"] = load_gradcam(study / "baseline", data["failures"]["cases"], study)
    data["causes"] = load_causes(study / "baseline", data["failures"]["cases"], study)
    data["score"] = load_score(planted_score, paths)
    for side, run in RUNS.items():
        if abs(data[f"{side}_metrics"]["test_accuracy"] - comparison[f"accuracy_{run}"]) > 1e-5:
            raise UserError(f"{paths['comparison']} is older than {paths[side + '_metrics']}; "
                            "re-run compare.py (make study does it)")
    return study, paths, data


#### Macros and tables

def macros(data, figures, study_name):
    comparison, failures, base_config = data["comparison"], data["failures"], data["base_config"]
    m = {"StudyName": tex_escape(study_name), "ArchName": setting_text("arch", base_config["arch"]),
         "DatasetName": dataset_name(base_config["dataset"], base_config.get("num_classes")),
         "ChangedList": changed_list(comparison["changed_values"]), "NumChanged": str(len(comparison["changed_values"])),
         "NumClasses": str(base_config["num_classes"]),
         "NumTest": str(comparison["n_test"]), "CamLayer": tex_escape(comparison["gradcam_layer"] or ""),
         "NumCases": str(len(failures["cases"])),
         "NumCasesFixed": str(sum(c["fixed"] for c in comparison["cases"] or [])),
         "AccDiff": signed(comparison["accuracy_difference"]), "CILow": signed(comparison["bootstrap_ci95"][0]),
         "CIHigh": signed(comparison["bootstrap_ci95"][1]), "BootstrapResamples": str(comparison["bootstrap"]["resamples"]),
         "McNemarP": p_tex(comparison["mcnemar_p"]), "GitCommit": tex_escape(comparison["git_commit"] or "unknown"),
         # Synthetic images come with the object's box, which gradcam.py draws.
         "BoxNote": "The dashed box marks the object." if base_config["dataset"] == "synthetic" else ""}
    for key in ("corrected", "worsened", "both_wrong", "both_right"):
        name = "".join(w.title() for w in key.split("_"))
        m[name], m[name + "Share"] = str(comparison[key]), pct(comparison["shares"][key], 1)
    for side, who in (("Base", "base"), ("Impr", "impr")):
        cfg, metrics = data[f"{who}_config"], data[f"{who}_metrics"]
        m.update({f"{side}AccEval": pct(metrics["test_accuracy"]), f"{side}TopFive": pct(metrics["top5_accuracy"]),
                  f"{side}Checkpoint": ("imported" if cfg.get("imported") else
                                        checkpoint_name(metrics.get("checkpoint", "last")))})
    t, nb, ni = at_threshold(comparison)
    m.update(HighConfThreshold=f"{t:g}", HighConfBase=str(nb), HighConfImpr=str(ni))
    for kind, rows in (("Gain", comparison["top_gains"]), ("Loss", comparison["top_losses"])):
        m[f"Top{kind}Name"] = tex_escape(rows[0]["name"]) if rows else "none"
        m[f"Top{kind}Change"] = signed(rows[0]["change"], 1) if rows else signed(0, 1)
    m.update(prose(data))
    m.update(figures)
    bad = [k for k in m if not re.fullmatch(r"[A-Za-z]+", k)]
    assert not bad, f"macro names must be letters only: {bad}"
    lines = [f"\\newcommand{{\\{k}}}{{{v}}}" for k, v in m.items()]
    flags = {f"Has{name}": f"Fig{name}" in figures for name in OPTIONAL_FIGURES.values()}
    flags.update(HasBaseCurves="FigBaseCurves" in figures, HasImprCurves="FigImprCurves" in figures)
    for name, on in flags.items():  # \ifHasReliability ... \fi in report.tex
        lines.append(f"\\newif\\if{name}\\{name}{'true' if on else 'false'}")
    return "\n".join(lines) + "\n"


def config_table(data, changed):
    base_config, impr_config = data["base_config"], data["impr_config"]
    keys = [k for k in SETTINGS if k in base_config or k in impr_config] + sorted(set(changed) - set(SETTINGS))
    ragged = r">{\raggedright\arraybackslash}"
    names = (tex_escape(base_config.get("name", "baseline")), tex_escape(impr_config.get("name", "improved")))
    lines = [rf"\begin{{tabularx}}{{\linewidth}}{{@{{}}{ragged}p{{0.36\linewidth}}{ragged}X{ragged}X@{{}}}}",
             r"\toprule", rf"setting & {names[0]} & {names[1]} \\",
             r"\midrule"]
    def shown(cfg, k):  # an imported model's recipe is unknown, not "--"
        return "unknown" if cfg.get("imported") and k not in cfg else setting_text(k, cfg.get(k))
    if base_config.get("imported") or impr_config.get("imported"):
        lines.append(r"weights & " + " & ".join(
            rf"imported: \texttt{{{tex_escape(Path(c['imported']['weights']).name)}}}" if c.get("imported")
            else "trained here" for c in (base_config, impr_config)) + r" \\")
    for k in keys:
        if not setting_shown(k, base_config, impr_config) and k not in changed:
            continue
        b, i = shown(base_config, k), shown(impr_config, k)
        label = tex_escape(setting_label(k))
        lines.append(rf"\rowcolor{{changed}}\textbf{{{label}}} & \textbf{{{b}}} & \textbf{{{i}}} \\"
                     if k in changed else rf"{label} & {b} & {i} \\")
    base_metrics, impr_metrics = data["base_metrics"], data["impr_metrics"]

    def row(label, f):
        return rf"{label} & {f(base_config, base_metrics)} & {f(impr_config, impr_metrics)} \\"

    def trained(f):  # what only a run trained here knows
        return lambda c, m: "unknown" if c.get("imported") else f(c, m)
    lines += [r"\midrule",
              row("evaluated checkpoint", lambda c, m: "as imported" if c.get("imported") else
                  f"{SHORT_CHECKPOINT.get(m.get('checkpoint'), 'n/a')}, epoch {m.get('epoch')}"),
              row("training / test images", lambda c, m: f"{c.get('n_train') or 'unknown'} / {c.get('n_test')}"),
              row("wall time (train + test)", trained(lambda c, m: seconds_text(c.get("wall_seconds")))),
              row("device", trained(lambda c, m: tex_escape(c.get("device_name", "n/a"))
                                       # images/s of a GPU shared with other runs are not a lone run's
                                       + (f", shared by {c['device_shared_by']} runs"
                                          if (c.get("device_shared_by") or 1) > 1 else ""))),
              row("git commit (training)",
                  trained(lambda c, m: rf"\texttt{{{tex_escape(str(c.get('git_commit'))[:12])}}}"
                          + code_resumes(c))),
              r"\bottomrule", r"\end{tabularx}"]
    return "\n".join(lines) + "\n"


def two_by_two_table(comparison):
    n, s = comparison["n_test"], comparison["shares"]

    def cell(key):
        return f"{comparison[key]} ({pct(s[key], 1)}\\,\\%)"
    right_b, right_i = comparison["both_right"] + comparison["worsened"], comparison["both_right"] + comparison["corrected"]
    return "\n".join([
        r"\begin{tabular}{@{}lrrr@{}}", r"\toprule",
        r" & improved right & improved wrong & total \\", r"\midrule",
        rf"baseline right & {cell('both_right')} & \textbf{{{cell('worsened')}}} & {right_b} \\",
        rf"baseline wrong & \textbf{{{cell('corrected')}}} & {cell('both_wrong')} & {n - right_b} \\",
        r"\midrule", rf"total & {right_i} & {n - right_i} & {n} \\", r"\bottomrule", r"\end{tabular}"]) + "\n"


def high_confidence_table(comparison):
    lines = [r"\begin{tabular}{@{}rrrr@{}}", r"\toprule", r"$t$ & baseline & improved & change \\",
             r"\midrule"]
    for r in comparison["high_confidence_errors"]:
        rel = ("--" if r["relative_reduction"] is None
               else rf"\ensuremath{{{-100 * r['relative_reduction']:+.0f}}}\,\%")
        lines.append(f"{r['threshold']:g} & {r['baseline']} & {r['improved']} & {rel} \\\\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def evidence_text(ev):
    def one(name, s):
        if s["empty"]:
            return f"{name}: empty map"
        where = f"{pct(s['centre_mass'], 0)}\\,\\% central" if s["centre_mass"] is not None else "n/a"
        if s["peak_in_box"] is not None:  # measured only where the dataset knows the object's box
            where += ", peak " + ("on" if s["peak_in_box"] else "off") + " object"
        return f"{name}: {where}"
    r = ev["pred_true_correlation"]
    corr = "$r$ n/a" if r is None else f"$r={r:.2f}$"
    return f"{one('pred.', ev['pred'])}; {one('true', ev['true'])}; {corr}"


def cases_table(failures, gradcam, causes, comparison):
    later = {c["index"]: c for c in comparison["cases"] or []}
    lines = [r"\begin{tabularx}{\linewidth}{@{}r>{\raggedright\arraybackslash}p{0.25\linewidth}rr"
             r">{\raggedright\arraybackslash}X>{\raggedright\arraybackslash}p{0.15\linewidth}@{}}",
             r"\toprule",
             r"\# & true $\to$ predicted & conf. & $p$(true), rank & Grad-CAM evidence & improved model \\",
             r"\midrule"]
    for k, (c, explained, stated) in enumerate(zip(failures["cases"], gradcam["cases"], causes["cases"])):
        pair = f"{tex_escape(c['true_name'])} $\\to$ {tex_escape(c['pred_name'])}"
        if "same_superclass" in c:
            pair += (f" (both {tex_escape(c['true_superclass'])})" if c["same_superclass"] else
                     f" ({tex_escape(c['true_superclass'])} $\\to$ {tex_escape(c['pred_superclass'])})")
        i = later.get(c["index"])
        after = ("--" if i is None else f"fixed ({i['improved_confidence']:.2f})" if i["fixed"] else
                 f"still wrong: {tex_escape(i['improved_pred_name'])} ({i['improved_confidence']:.2f})")
        source = "analyst" if explained["hypothesis_source"] == "analyst" else "automatic"
        lines += [f"{c['index']} & {pair} & {c['confidence']:.2f} & {c['true_prob']:.2f}, {c['true_rank']} & "
                  f"{evidence_text(explained['evidence'])} & {after} \\\\",
                  rf"\multicolumn{{6}}{{@{{}}p{{\linewidth}}@{{}}}}{{\emph{{Hypothesis ({source}):}} "
                  rf"{tex_escape(explained['hypothesis'])}}} \\",
                  # the stated cause beside the hypothesis, which stays as given
                  rf"\multicolumn{{6}}{{@{{}}p{{\linewidth}}@{{}}}}{{\emph{{Stated cause:}} {cause_words(stated)}}} \\",
                  r"\midrule" if k + 1 < len(failures["cases"]) else r"\bottomrule"]
    return "\n".join(lines + [r"\end{tabularx}"]) + "\n"


#### Build

def figure_paths(paths, report_dir):
    """Figure macros -> paths relative to the report folder (LaTeX runs there)."""
    keys = {macro: key for macro, key in FIGURE_MACROS.items() if key in paths}  # no curves if imported
    keys.update({f"Fig{name}": f"cmp_{stem}" for stem, name in OPTIONAL_FIGURES.items() if f"cmp_{stem}" in paths})
    out = {}
    for macro, key in keys.items():
        rel = Path(os.path.relpath(paths[key], report_dir)).as_posix()
        if re.search(r"[\s%#{}\\~^$&]", rel):
            raise UserError(f"figure path {rel} has characters LaTeX cannot read in a file name; "
                            "use a study folder and --out without spaces or %#{}\\~^$&")
        out[macro] = rel
    return out


def write_sources(study, paths, data, report_dir, scale=1):
    if not TEMPLATE.is_file():
        raise UserError(f"the LaTeX source {TEMPLATE} is missing; restore it from git")
    figures = figure_paths(paths, report_dir)
    comparison = data["comparison"]
    write_text(report_dir / "macros.tex", macros(data, dict(figures, FigScale=f"{scale:g}"), study.name))
    write_text(report_dir / "table-config.tex", config_table(data, comparison["changed_settings"]))
    write_text(report_dir / "table-twobytwo.tex", two_by_two_table(comparison))
    write_text(report_dir / "table-highconf.tex", high_confidence_table(comparison))
    write_text(report_dir / "table-cases.tex",
               cases_table(data["failures"], data["gradcam"], data["causes"], comparison))
    write_text(report_dir / "figures.txt", "".join(f"{p}\n" for p in figures.values()))
    write_text(report_dir / "report.tex", TEMPLATE.read_text())
    return figures


def run(args):
    study, paths, data = load_study(args.study, args.planted_score)
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


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--study", required=True, help="study folder with baseline/, improved/ and compare/")
    p.add_argument("--out", default=None, help="the PDF to write (default: <study>/report.pdf); "
                   "the LaTeX sources go to report/ next to it")
    p.add_argument("--planted-score", default=None, help="make planted's score of the cause rule "
                   "(runs/planted/score.json), quoted in the report; without it the report says the rule is not scored")
    # The study's brief allows six pages: a longer report is an error, not a warning.
    p.add_argument("--max-pages", type=at_least(1), default=MAX_PAGES, help="longest allowed PDF")
    return p


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
