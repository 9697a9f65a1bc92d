"""The import graph is a star: a step script imports shared modules, never another step (issue 22).

A step that imports another runs under that step's dependencies, and a change to the imported
step re-runs both in make. Shared code lives in modules of its own (common.py, contract.py,
corrupt.py, cam.py, hypotheses.py, ...). report/ is not checked here.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("train", "evaluate", "failures", "gradcam", "corruptions", "faithfulness", "compare")


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
