"""The wording of failure hypotheses, shared by failures.py (which composes a case's first
hypothesis from its probabilities) and gradcam.py (which composes the final one, adding what the
network looked at), so both say it the same way.

    from hypotheses import compose_hypothesis, format_probability
    format_probability(0.004)                       # 'p=0.004'
    compose_hypothesis({"true_name": "cat", "pred_name": "dog", "suggestions": ["confident error"]})
    # 'cat predicted as dog: confident error.'

Importing this module does nothing.
"""


def format_probability(p):
    """A probability as 'p=0.93', 'p=0.004' or 'p<0.001': small ones keep a significant digit.
    (Not a p-value: report/prose.py's p_tex writes those.)"""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def compose_hypothesis(case):
    """The automatic hypothesis: a case's suggestions as one sentence after its confusion."""
    head = f"{case['true_name']} predicted as {case['pred_name']}"
    return f"{head}: " + "; ".join(case["suggestions"]) + "." if case["suggestions"] else head + "."



CAUSE_NAMES = {"label_error": "label error", "lookalike": "look-alike", "context": "context cue",
               "fragile": "fragile", "undecided": "undecided"}


def cause_sentence(case, verdict, evidence):
    """The stated cause with the two or three numbers that carry it, for causes.py's cases."""
    nb = evidence["neighbours"]
    pair = (f"{evidence['pair_errors']} {case['true_name']}->{case['pred_name']} errors "
            f"({evidence['pair_lift']:.1f}x an even spread)")
    share = lambda s: f"{round(s * nb['k'])} of {nb['k']} nearest training images"  # noqa: E731
    cause = verdict["cause"]
    if cause == "label_error":
        why = (f"true class nearly ruled out ({format_probability(case['true_prob'])}), "
               f"{share(nb['pred_share'])} labelled {case['pred_name']}, closer to them than "
               f"{100 * nb['typicality']:.0f}% of correctly classified images are to theirs")
    elif cause == "lookalike":
        why = (f"a systematic pair ({pair}), {share(nb['pred_share'] + nb['true_share'])} labelled "
               f"{case['pred_name']} or {case['true_name']}, alike in the object, not the background")
    elif cause == "context":
        px = evidence["neighbour_pixels"]
        why = (f"a systematic pair ({pair}), the nearest training images share its background "
               f"(pixel r={px['background']:.2f}) more than its object (r={px['object'] or 0:.2f})")
    elif cause == "fragile":
        why = (f"{evidence['moved_by_small_changes']} of 5 small changes (flip, 2-pixel shifts) undo the "
               f"prediction, of a one-off pair ({pair})")
    elif "several" in verdict:
        why = "the evidence fits " + " and ".join(CAUSE_NAMES[c] for c in verdict["several"])
    else:
        c = verdict["closest"]
        why = (f"closest to {CAUSE_NAMES[c['cause']]} ({c['met']} of {c['of']} conditions; not: "
               + ", ".join(c["failed"]) + ")")
    return f"{CAUSE_NAMES[cause]}: {why}."
