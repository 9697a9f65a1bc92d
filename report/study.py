"""What report.py and supplement.py share: the study's files, found, read and checked, and the
LaTeX build that turns sources into a PDF. Neither report script imports the other; both import this.

Every JSON file the report build reads is read through contract.py (read_json, or the run-folder
loader of its kind) and checked against its shape (shapes.FILE_SHAPES, the keys that report.py,
prose.py and supplement.py read from its kind of file), before anything is written: a damaged or partial study
stops with one sentence naming the file and the script that writes it (contract.WRITERS), never
with a traceback from deep inside a sentence.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

from common import UserError, atomic_write
from contract import WRITERS, read_causes, read_config, read_gradcam, read_json, read_metrics, read_score
from shapes import SIDES, items_text, read_as

STUDIES = ("resnet18-cifar100", "simplecnn-cifar10", "smoke")  # the Makefile's STUDY values
MAKE_TARGETS = {"seeds.json": "seeds", "ablation.json": "ablation"}  # every other file: make study
LATEX_PACKAGES = "texlive-latex-base texlive-latex-recommended texlive-fonts-recommended latexmk"


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
    """data, read from path, if it holds every key the report reads from its kind of file
    (shapes.FILE_SHAPES), with each optional key it lacks present as null."""
    data, problem = read_as(data, path.name, "the report")
    if problem:
        raise UserError(f"{path} {problem}; {rewrite(path, study, writer)}")
    return data


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


def load_causes(run, cases, study):
    """causes.json, which contract.read_causes checks to state the cause of `cases` with metrics.json's weights."""
    require_file(run / "causes.json", study)
    return checked(run / "causes.json", read_causes(run, cases), study)


def load_score(path, paths):
    """make planted's score.json (given by path, under any name), checked and added to paths; None
    without a path (the rule not scored here). One planted study scores the rule for every study:
    its fix is make planted."""
    if path is None:
        return None
    path = paths["planted_score"] = Path(path)
    data, problem = read_as(read_score(path), "score.json", "the report")
    if problem:
        raise UserError(f"{path} {problem}; write it again with {WRITERS['score.json']} (make planted)")
    return data


def load_extras(study, paths):
    """make seeds / make ablation results and both faithfulness.json, each None where it does not
    exist; the files that do are added to paths."""
    extras = dict.fromkeys(("seeds", "ablation", "faithfulness"))
    for name in ("seeds", "ablation"):
        path = study / name / f"{name}.json"
        if path.is_file():
            paths[f"{name}_summary"] = path
            extras[name] = load_json(path, study, f"{name} summary")[name]
    if extras["seeds"] is not None:
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
            raise UserError(f"{path} holds {items_text(len(seeds[key]['values']))} as seeds.{key}.values for "
                            f"{n} seeds, where the report reads one per seed; {rewrite(path, study)}")
        if n > 1 and seeds[key]["std"] is None:
            raise UserError(f"{path} holds null as seeds.{key}.std for {n} seeds, where the report reads "
                            f"a number; {rewrite(path, study)}")


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
