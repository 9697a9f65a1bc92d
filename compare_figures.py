"""compare.py's figures, each written as PNG (for viewing) and PDF (for the report).

Every function takes matplotlib.pyplot as `plt`, so that importing this module loads no plotting
backend; compare.py calls them inside plt.rc_context(STYLE).
"""
import numpy as np

from cam import overlay  # the same blending as gradcam.py's figures
from common import save_figure

STYLE = {"font.size": 7.5, "axes.titlesize": 8, "axes.labelsize": 7.5, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "legend.fontsize": 7}  # >= 7 pt at print size (3.3 or 7 in wide)
BASE_C, IMPR_C, GOOD_C, BAD_C = "#4c72b0", "#dd8452", "#55a868", "#c44e52"


def save(fig, out, stem, plt):
    """PNG for viewing, PDF for the report (no creation date, so the same figure gives the same bytes)."""
    save_figure(fig, out / f"{stem}.png", dpi=200, bbox_inches="tight")
    save_figure(fig, out / f"{stem}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)


def plot_confidence(b, i, names, bins, out, plt):
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.3), sharey=True)
    for ax, side, name in zip(axes, (b, i), names):
        for group, mask, colour in (("correct", side["correct"], GOOD_C), ("wrong", ~side["correct"], BAD_C)):
            conf = side["conf"][mask]
            if len(conf):
                ax.hist(conf, bins, weights=np.full(len(conf), 1 / len(conf)), color=colour, alpha=0.6,
                        label=f"{group} (n={len(conf)}, mean {conf.mean():.2f})")
        ax.set(title=name, xlabel="max-softmax confidence", xlim=(0, 1))
        ax.legend(loc="best", frameon=False)
    axes[0].set_ylim(0, axes[0].get_ylim()[1] * 1.3)  # headroom for the legends
    axes[0].set_ylabel("share of the group")
    save(fig, out, "confidence", plt)


def plot_high_confidence(table, names, out, plt):
    fig, ax = plt.subplots(figsize=(3.4, 2.4))
    x = np.arange(len(table))
    rb = np.array([100 * r["baseline_rate"] for r in table])
    ri = np.array([100 * r["improved_rate"] for r in table])
    ax.bar(x - 0.2, rb, 0.4, color=BASE_C, label=names[0])
    ax.bar(x + 0.2, ri, 0.4, color=IMPR_C, label=names[1])
    top = max(rb.max(), ri.max(), 0.1) * 1.3
    for k, r in enumerate(table):
        if r["relative_reduction"] is not None:  # staggered: neighbouring labels must not touch
            change = -100 * r["relative_reduction"]
            sign = "+" if change >= 0 else "\u2212"  # a real minus sign
            ax.text(k, max(rb[k], ri[k]) + (k % 2) * 0.07 * top, f"{sign}{abs(change):.0f}%",
                    ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(x, [f"{r['threshold']:g}" for r in table])
    ax.set(xlabel="confidence threshold t", ylabel="wrong with conf. >= t (% of test)")
    ax.set_ylim(0, top)
    ax.legend(frameon=False, loc="upper right")
    ax.set_title("High-confidence errors (labels: change vs baseline)")
    save(fig, out, "high_confidence", plt)


def plot_per_class(rows, gains, losses, out, plt):
    rows = sorted((r for r in rows if r["n"]), key=lambda r: (r["change"], r["class"]))
    ch = np.array([100 * r["change"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.bar(np.arange(len(rows)), ch, 0.8, color=np.where(ch >= 0, GOOD_C, BAD_C))
    ax.axhline(0, color="black", lw=0.6)
    ax.set(xlim=(-1, len(rows)), ylabel="accuracy change (points)",
           title=f"Per-class accuracy change, improved - baseline: {int((ch > 0).sum())} classes up, "
                 f"{int((ch < 0).sum())} down, {int((ch == 0).sum())} unchanged")
    if len(rows) <= 25:  # few classes: every name fits as a tick label
        ax.set_xticks(np.arange(len(rows)), [r["name"] for r in rows], rotation=45, ha="right")
    else:  # many classes: name only the largest losses (left end) and gains (right end), fanned out
        ax.set_xticks([])
        ax.set_xlabel(f"{len(rows)} classes, sorted by change")
        pos = {r["class"]: k for k, r in enumerate(rows)}
        for named, start in ((losses, 0.03), (gains, 0.97 - 0.05 * (len(gains) - 1))):
            for j, r in enumerate(sorted(named, key=lambda r: pos[r["class"]])):
                ax.annotate(f"{r['name']} ({100 * r['change']:+.1f})", (pos[r["class"]], 0),
                            xycoords=ax.get_xaxis_transform(), xytext=(start + 0.05 * j, -0.12),
                            textcoords="axes fraction", rotation=90, ha="center", va="top", fontsize=7,
                            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.4", "shrinkA": 0,
                                        "shrinkB": 1, "relpos": (0.5, 1)})
    save(fig, out, "per_class", plt)


def plot_reliability(cal, names, out, plt):
    """Guo et al.'s reliability diagram (accuracy per confidence bin), the bins' shares of images below."""
    fig, axes = plt.subplots(2, 2, figsize=(7, 3.4), sharex=True, height_ratios=(3, 1), layout="constrained")
    for col, key, name in zip(axes.T, ("baseline", "improved"), names):
        c, r = cal[key], cal[key]["reliability"]
        edges, count = np.array(r["edges"]), np.array(r["count"])
        full = count > 0
        acc = np.array([r["accuracy"][k] for k in np.flatnonzero(full)])
        conf = np.array([r["confidence"][k] for k in np.flatnonzero(full)])
        width = edges[1] - edges[0]
        col[0].bar(edges[:-1][full], acc, width, align="edge", color=BASE_C, edgecolor="white", lw=0.4,
                   label="accuracy")
        # The gap is hatched, not filled: where accuracy exceeds confidence it lies on the blue bar.
        col[0].bar(edges[:-1][full], conf - acc, width, bottom=acc, align="edge", facecolor="none",
                   edgecolor=BAD_C, hatch="////", lw=0.6, label="gap to mean confidence")
        col[0].plot([0, 1], [0, 1], "--", color="0.3", lw=0.8, label="perfect calibration")
        col[0].text(0.03, 0.97, f"ECE {100 * c['ece']:.2f}%\nNLL {c['nll']:.3f}\nBrier {c['brier']:.3f}",
                    transform=col[0].transAxes, va="top", fontsize=7,
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1.5))
        col[0].set(title=name, xlim=(0, 1), ylim=(0, 1))
        col[1].bar(edges[:-1], 100 * count / count.sum(), width, align="edge", color="0.5", edgecolor="white", lw=0.4)
        col[1].set_xlabel(f"confidence (max softmax), {len(count)} bins")
    axes[0, 0].set_ylabel("accuracy in bin")
    axes[1, 0].set_ylabel("% of images")
    fig.legend(*axes[0, 1].get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
    save(fig, out, "reliability", plt)


def plot_suspects(suspects, images, out, plt):
    """Thumbnails of the first suspects (the label least believed): the label, the class both
    models flag, and each model's probability of that class."""
    n = len(images)
    ncols = min(n, 6)
    fig, axes = plt.subplots(-(-n // ncols), ncols, figsize=(7, 1.55 * -(-n // ncols) + 0.35),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, s, img in zip(axes.flat, suspects["suspects"], images):
        ax.imshow(overlay(img, None), interpolation="nearest")
        ax.set_title(f"#{s['index']} label {s['label_name']}\nboth flag {s['agreed_name']}\n"
                     f"p={s['baseline_confidence']:.2f} / {s['improved_confidence']:.2f}", fontsize=6.5, pad=2)
    fig.suptitle("Possible label errors, to check by eye: both models flag the same other class by confident\n"
                 f"learning's per-class thresholds ({suspects['count']} test images; the {n} with the label "
                 "least believed shown)", fontsize=7.5)
    save(fig, out, "suspects", plt)


def plot_gradcam(rechecked, images, maps, layer, names, out, plt):
    cols = [("image", None, None), (f"{names[0]}\nits prediction", "baseline", "pred"),
            (f"{names[1]}\nits prediction", "improved", "pred"),
            (f"{names[0]}\ntrue class", "baseline", "true"), (f"{names[1]}\ntrue class", "improved", "true")]
    n = len(rechecked)
    fig, axes = plt.subplots(n, 5, figsize=(7, 1.5 * n + 0.9), squeeze=False, layout="constrained")
    for k, c in enumerate(rechecked):
        for j, (head, key, target) in enumerate(cols):
            ax = axes[k, j]
            ax.imshow(overlay(images[k], maps[key, target][k] if key else None), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if key:  # the class the map is for, with that model's probability; red if it is wrong
                name, prob = ((c[f"{key}_pred_name"], c[f"{key}_confidence"]) if target == "pred"
                              else (c["true_name"], c[f"{key}_true_prob"]))
                ax.set_title(f"{name} " + (f"p={prob:.2f}" if prob >= 0.005 else "p<0.01"), fontsize=7, pad=2,
                             color=BAD_C if name != c["true_name"] else "black")
            if k == 0:  # column heads above the first row's titles
                ax.annotate(head, (0.5, 1), xycoords="axes fraction", xytext=(0, 12 if key else 2),
                            textcoords="offset points", ha="center", va="bottom", weight="bold")
        axes[k, 0].set_ylabel(f"#{c['index']} {c['true_name']}\n{'fixed' if c['fixed'] else 'STILL FAILING'}",
                              color="black" if c["fixed"] else BAD_C)
    fig.suptitle(f"Grad-CAM at {layer}, baseline vs improved (red: a wrong prediction). Each map is "
                 "scaled to [0, 1] per image,\nso magnitudes are not comparable across models or maps; "
                 "compare where each map looks.", fontsize=7.5)
    save(fig, out, "gradcam_compare", plt)


def plot_corruptions(cmp, b, i, names, out, plt):
    """Accuracy against severity (0 = clean), one small panel per corruption."""
    cols = 6
    nrows = -(-len(cmp["corruptions"]) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(7, 1.15 * nrows + 0.45), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    sev = [0] + cmp["severities"]
    for ax, row in zip(axes.flat, cmp["per_corruption"]):
        for g, name, colour in ((b, names[0], BASE_C), (i, names[1], IMPR_C)):
            ax.plot(sev, [100 * a for a in [g["clean_accuracy"]] + g["accuracy"][row["name"]]], "o-",
                    color=colour, ms=2, lw=1, label=name)
        label = row["name"].replace("_transform", "").replace("_compression", "").replace("_", " ")
        ax.set_title(f"{label} ({100 * row['difference']:+.1f})", fontsize=7, pad=2)
        ax.set_xticks(sev)
        ax.grid(alpha=0.3, lw=0.4)
    spare = axes.flat[len(cmp["per_corruption"]):]
    for ax in spare:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    for ax in axes[-1]:
        ax.set_xlabel("severity")
        ax.xaxis.set_tick_params(labelbottom=True)
    handles = axes.flat[0].get_legend_handles_labels()
    if len(spare):
        spare[0].legend(*handles, loc="center", frameon=False)
    else:
        fig.legend(*handles, loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle("Accuracy under corruption (severity 0 = clean; in brackets: mean change over the "
                 "severities, improved - baseline, points)", fontsize=7.5)
    save(fig, out, "corruptions", plt)
