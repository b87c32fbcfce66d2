"""The evaluation report's figures: reliability diagram, confusion matrix, model comparison."""

from __future__ import annotations

import io

import numpy as np


def _save(plt, fig, path: str) -> None:
    """Writes the figure as PNG atomically through tf.io.gfile (the folder may be a bucket); closes it."""
    from noisy_student_tf import manifests

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    manifests.write_file(path, buffer.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and in tests
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(bins: list, ece: float, path: str, title: str) -> None:
    """Accuracy per confidence bin against the diagonal of perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    lower = [b["lower"] for b in bins]
    width = bins[0]["upper"] - bins[0]["lower"]
    accuracy = [b["accuracy"] or 0.0 for b in bins]
    ax.bar(lower, accuracy, width=width, align="edge", edgecolor="k", label="accuracy")
    ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE {100 * ece:.2f}%")
    ax.legend(loc="upper left")
    fig.tight_layout()
    _save(plt, fig, path)


def confusion_plot(confusion: list, path: str, title: str, class_names=None) -> None:
    plt = _pyplot()
    counts = np.asarray(confusion)
    n = len(counts)
    fig, ax = plt.subplots(figsize=(1 + 0.4 * n, 1 + 0.4 * n) if n > 12 else (5, 4.5))
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if n <= 30:
        labels = class_names if class_names and len(class_names) == n else range(n)
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    _save(plt, fig, path)


def comparison_plot(reports: list, path: str) -> None:
    """One figure for all models: corruption accuracy by severity, attacks by eps, flips."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for report in reports:
        name = report["name"]
        corruption = report.get("corruption") or {}
        if corruption:
            severities = sorted({int(s) for c in corruption.values() for s in c})
            mean = [
                100 * np.mean([c[str(s)] for c in corruption.values() if str(s) in c])
                for s in severities
            ]
            axes[0].plot([0, *severities], [100 * report["top1"], *mean], "o-", label=name)
        for attack, style in (("fgsm", "o-"), ("pgd", "s--")):
            values = report.get(attack) or {}
            if values:
                eps = sorted(values, key=float)
                axes[1].plot(
                    [0.0] + [float(e) for e in eps],
                    [100 * report["top1"]] + [100 * values[e] for e in eps],
                    style,
                    label=f"{name} {attack.upper()}",
                )
    axes[0].set(xlabel="severity (0 = clean)", ylabel="top-1 (%)", title="corruptions (mean)")
    axes[1].set(xlabel="eps (0-255 pixels)", ylabel="top-1 (%)", title="adversarial")
    flips = [r.get("flip_rate") or {} for r in reports]
    kinds = sorted({k for f in flips for k in f})
    width = 0.8 / max(len(reports), 1)
    for i, (report, flip) in enumerate(zip(reports, flips)):
        axes[2].bar(
            np.arange(len(kinds)) + i * width,
            [100 * flip.get(k, 0.0) for k in kinds],
            width,
            label=report["name"],
        )
    axes[2].set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds)
    axes[2].set(ylabel="flip rate (%)", title="perturbation stability")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(plt, fig, path)
