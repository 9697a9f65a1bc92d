"""Compare two study folders file by file: does a change of code leave a study's results as they were?

    python tools/study_diff.py runs-before/smoke runs/smoke

Every JSON file is compared key by key, leaving out what says when, where and with which code a
file was made (times, paths, commits: PROVENANCE below); every .npz array bit for bit; history.csv
in its non-timing columns. Keys that only one side has are listed (a new version may add some).
Exits 1 when a result differs, so a refactoring can be checked in one command.
"""
import csv
import json
import sys
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script: common.py is in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import UserError, arg_parser, cli_guard

# When, where and with which code: expected to differ between two runs of the same study.
PROVENANCE = {"seconds", "wall_seconds", "compile_seconds", "git_commit", "commit", "train_images_per_second",
              "images_per_second", "seconds_by_corruption", "working_dir", "run", "runs_dir", "data_dir",
              "command", "out", "cases_file", "device_name", "torch_version", "torchvision_version",
              "python_version", "device_slot"}
HISTORY_RESULTS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


def json_differences(x, y, where, roots):
    """Where two JSON values differ, as 'path: before != after' or 'path: only in after'."""
    if isinstance(x, dict) and isinstance(y, dict):
        out = []
        for key in sorted(set(x) | set(y), key=str):
            if key in PROVENANCE:
                continue
            if key not in x or key not in y:
                out.append(f"{where}.{key}: only in {'after' if key in y else 'before'}")
            else:
                out += json_differences(x[key], y[key], f"{where}.{key}", roots)
        return out
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in json_differences(u, v, f"{where}[{i}]", roots)]
    if isinstance(x, str) and isinstance(y, str) and any(root in s for root, s in zip(roots, (x, y))):
        return []  # a path inside the study folder: differs with the folder's place
    return [] if x == y else [f"{where}: {str(x)[:80]} != {str(y)[:80]}"]


def history_rows(path):
    with open(path, newline="") as f:
        return [[row.get(c) for c in HISTORY_RESULTS] for row in csv.DictReader(f)]


def compare(before, after):
    """(lines to print, number of files whose results differ)."""
    lines, differing = [], 0
    roots = (str(before), str(after))
    for path in sorted(before.rglob("*.json")):
        rel, other = path.relative_to(before), after / path.relative_to(before)
        if not other.is_file():
            lines.append(f"{rel}: missing after")
            differing += 1
            continue
        found = json_differences(json.loads(path.read_text()), json.loads(other.read_text()), "", roots)
        changed = [d for d in found if not d.endswith("only in after")]
        differing += bool(changed)
        lines.append(f"{rel}: " + ("identical" if not found else f"{len(changed)} differences, "
                                   f"{len(found) - len(changed)} keys added"))
        lines += [f"    {d}" for d in found[:12]]
    for path in sorted(before.rglob("*.npz")):
        rel, other = path.relative_to(before), after / path.relative_to(before)
        x, y = np.load(path), np.load(other) if other.is_file() else None
        same = y is not None and set(x.files) == set(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files)
        differing += not same
        lines.append(f"{rel}: {'bit-identical' if same else 'DIFFERENT'} ({', '.join(x.files)})")
    for path in sorted(before.rglob("history.csv")):
        rel, other = path.relative_to(before), after / path.relative_to(before)
        same = other.is_file() and history_rows(path) == history_rows(other)
        differing += not same
        lines.append(f"{rel}: {'identical' if same else 'DIFFERENT'} ({', '.join(HISTORY_RESULTS)})")
    return lines, differing


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("before", help="a study folder, e.g. a copy of runs/smoke made before the change")
    p.add_argument("after", help="the same study made after the change")
    return p


def run(args):
    before, after = Path(args.before), Path(args.after)
    for folder in (before, after):
        if not folder.is_dir():
            raise UserError(f"study folder {folder} does not exist")
    lines, differing = compare(before, after)
    print("\n".join(lines))
    print(f"files whose results differ: {differing}")
    return 1 if differing else 0


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
