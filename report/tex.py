"""LaTeX text from data: escaping, numbers, counts and lists, settings and dataset names.

The formatting layer of the report's words (report/prose.py builds sentences with it; report.py
and supplement.py use it for tables): no judgement and no sentence lives here.
"""
import re
import unicodedata
from pathlib import Path


ARCH_NAMES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50",
              "resnet101": "ResNet-101", "resnet152": "ResNet-152", "wide_resnet50_2": "Wide ResNet-50-2",
              "wide_resnet101_2": "Wide ResNet-101-2", "resnext50_32x4d": "ResNeXt-50 (32x4d)",
              "simplecnn": "SimpleCNN"}


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
