"""The import graph is a star: a step script imports shared modules, never another step (issue 22).

A step that imports another runs under that step's dependencies, and a change to the imported
step re-runs both in make. Shared code lives in modules of its own (common.py, contract.py,
corrupt.py, cam.py, hypotheses.py, ...). report/ is not checked here.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("train", "evaluate", "failures", "gradcam", "causes", "corruptions", "faithfulness", "compare", "explore")


def imported_modules(source):
    """Top-level names of the modules a Python source imports anywhere (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imported_modules_sees_every_form_of_import():
    source = ("import numpy as np\nimport failures\nfrom gradcam import grad_cam\n"
              "def f():\n    from compare import main\n    import os.path\n")
    assert imported_modules(source) == {"numpy", "failures", "gradcam", "compare", "os"}


@pytest.mark.parametrize("step", STEPS)
def test_no_step_imports_another_step(step):
    imported = imported_modules((ROOT / f"{step}.py").read_text())
    others = sorted(imported & (set(STEPS) - {step}))
    assert not others, f"{step}.py imports the step(s) {others}: move what they share into a shared module"


def test_no_shared_module_imports_a_step():
    """The shared modules of the root (everything there that is not a step) import no step either,
    so that no step reaches another through them."""
    shared = sorted(p for p in ROOT.glob("*.py") if p.stem not in STEPS)
    assert {"common", "contract", "cam", "hypotheses"} <= {p.stem for p in shared}
    for path in shared:
        steps = sorted(imported_modules(path.read_text()) & set(STEPS))
        assert not steps, f"{path.name} imports the step(s) {steps}"


# The Makefile's dependency list of each step: the script and every project module it imports,
# directly or through another module, so that editing any of them re-runs the step (training
# excepted: the Makefile keeps a finished training when code changes, on purpose).
MAKE_LISTS = {"EVALUATE": "evaluate.py", "FAILURES": "failures.py", "GRADCAM": "gradcam.py", "CAUSES": "causes.py",
              "CORRUPTIONS": "corruptions.py", "FAITHFULNESS": "faithfulness.py", "COMPARE": "compare.py",
              "REPORT": "report/report.py", "SUPPLEMENT": "report/supplement.py", "EXPLORE": "explore.py"}


def project_modules():
    """Module name -> path of every Python module a script can import from the root or report/."""
    return {p.stem: p.relative_to(ROOT).as_posix() for d in (ROOT, ROOT / "report") for p in d.glob("*.py")}


def imported_closure(script, modules):
    """The project modules `script` imports, directly or through one another, with itself."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += [modules[m] for m in imported_modules((ROOT / path).read_text()) if m in modules]
    return seen


def make_list(makefile, name):
    """The Python files in one of the Makefile's dependency variables, $(...) references expanded."""
    value = re.search(rf"^{name} := (.*)$", makefile, re.M).group(1).split()
    out = set()
    for item in value:
        ref = re.fullmatch(r"\$\((\w+)\)", item)
        out |= make_list(makefile, ref.group(1)) if ref else {item} if item.endswith(".py") else set()
    return out


@pytest.mark.parametrize("name", MAKE_LISTS)
def test_the_makefile_dependency_lists_follow_the_imports(name):
    makefile, modules = (ROOT / "Makefile").read_text(), project_modules()
    needed, listed = imported_closure(MAKE_LISTS[name], modules), make_list(makefile, name)
    assert needed <= listed, f"{name} lacks {sorted(needed - listed)}, which {MAKE_LISTS[name]} imports"
    if name != "SUPPLEMENT":  # it includes $(REPORT) whole: the report's PDF goes into the supplement
        assert listed <= needed, f"{name} lists {sorted(listed - needed)}, which {MAKE_LISTS[name]} does not import"
