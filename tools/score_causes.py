"""Score the causes that causes.py stated against the causes planted in synthetic-planted, and count
the false alarms on a control model trained on the same images with nothing planted.

    python tools/score_causes.py --planted runs/planted/baseline --control runs/planted/control
    python tools/score_causes.py --planted A --control B --out score.json --top 10

Each error of the planted model has one planted cause (or none): a flipped test label (label
error); a test object of another class on the cue's stripes (context); an error within the
look-alike pair (look-alike). Prints, and writes with --out, the
confusion table of planted vs stated cause ("undecided" a column of its own), each stated cause's
precision over all its cases and over its `--top` most confident ones (as slice-discovery
benchmarks score planted slices), each planted cause's recall, and the share of the control's
errors stated as a cause that only planting makes (label error or context): false alarms.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's shared modules

from common import UserError, arg_parser, at_least, cli_guard, provenance, save_json  # noqa: E402
from contract import dataset_from_config, read_causes, read_config, read_json  # noqa: E402
from judgements import CAUSE_THRESHOLDS, CAUSES  # noqa: E402
from shapes import conform  # noqa: E402

STATED = (*CAUSES, "undecided")
PLANTED = ("label_error", "lookalike", "context", "none")
PLANTED_ONLY = ("label_error", "context")  # with nothing planted, these are false alarms


def read_stated(run):
    """causes.py's cases of a run, checked against its failures.json (failures.py --all-errors:
    a cause for every error)."""
    data = read_json(Path(run) / "failures.json", "failures file")
    return read_causes(run, data.get("cases") or [])["cases"]


def planted_cause(case, planted):
    """What was planted behind one error of the planted model."""
    if case["row"] in planted["label_error"]:
        return "label_error"
    if case["row"] in planted["context"]:  # an object of another class on the cue's stripes
        return "context"
    if {case["true"], case["pred"]} <= set(planted["lookalike_classes"]):
        return "lookalike"
    return "none"


def score(cases, truths, top):
    """The confusion table, precision (all and top) of each stated cause, recall of each planted one."""
    table = {p: {s: 0 for s in STATED} for p in PLANTED}
    for case, truth in zip(cases, truths):
        table[truth][case["cause"]] += 1
    precision = {}
    for cause in CAUSES:
        named = sorted((c for c in zip(cases, truths) if c[0]["cause"] == cause),
                       key=lambda ct: -ct[0]["confidence"])
        hits = [truth == cause for _, truth in named]
        precision[cause] = {"n": len(named), "all": share(sum(hits), len(hits)),
                            "top": share(sum(hits[:top]), len(hits[:top]))}
    recall = {p: share(table[p][p], sum(table[p].values())) for p in PLANTED if p != "none"}
    return {"table": table, "precision": precision, "recall": recall, "top": top}


def share(k, n):
    return round(k / n, 4) if n else None


def false_alarms(cases):
    counts = {s: sum(c["cause"] == s for c in cases) for s in STATED}
    alarms = sum(counts[s] for s in PLANTED_ONLY)
    return {"n": len(cases), "stated": counts, "false_alarms": alarms, "rate": share(alarms, len(cases))}


def markdown(result):
    """The confusion table and the scores as docs/RESULTS.md shows them."""
    s = result["planted"]
    lines = ["| planted \\ stated | " + " | ".join(STATED) + " | recall |", "|---" * (len(STATED) + 2) + "|"]
    for p in PLANTED:
        rec = s["recall"].get(p)
        lines.append(f"| {p} | " + " | ".join(str(s["table"][p][c]) for c in STATED)
                     + f" | {'' if rec is None else f'{100 * rec:.0f}%'} |")
    pct = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    lines.append("")
    lines += [f"- {c}: {s['precision'][c]['n']} stated, precision {pct(s['precision'][c]['all'])}, "
              f"top-{s['top']} precision {pct(s['precision'][c]['top'])}" for c in CAUSES]
    if result.get("control"):
        ctl = result["control"]
        lines.append(f"- control: {ctl['false_alarms']} of {ctl['n']} errors stated label error or context "
                     f"({pct(ctl['rate'])} false alarms); stated: "
                     + ", ".join(f"{ctl['stated'][c]} {c}" for c in STATED))
    return "\n".join(lines)


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--planted", required=True, help="run folder of a synthetic-planted model with causes.json")
    p.add_argument("--control", default=None, help="run folder of a synthetic-control model with causes.json")
    p.add_argument("--top", type=at_least(1), default=10, help="most confident cases per stated cause")
    p.add_argument("--out", default=None, help="write the scores to this JSON file")
    return p


def run(args):
    config = read_config(args.planted)
    planted = dataset_from_config(config).planted
    if planted is None:
        raise UserError(f"{args.planted} was not trained on synthetic-planted (its dataset is "
                        f"{config['dataset']}); nothing was planted to score against")
    cases = read_stated(args.planted)
    # The thresholds scored, so that a report can tell whether its rule is the one scored.
    result = {"thresholds": CAUSE_THRESHOLDS, "planted": score(cases, [planted_cause(c, planted) for c in cases],
                                                               args.top), **provenance()}
    if args.control:
        result["control"] = false_alarms(read_stated(args.control))
    if args.out:
        save_json(conform(result, "score.json"), args.out)  # the shape the report reads
    print(markdown(result))
    return result


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
