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
