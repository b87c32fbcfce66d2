"""Plots of the filter/balance stage, from its manifest (no records needed)."""

from __future__ import annotations

import io
import os

import numpy as np

from noisy_student_tf import manifests


def plot_filter_balance(manifest: dict, output_dir: str) -> list[str]:
    """Writes confidence_histogram.png and images_per_class.png; returns their names.

    The per-class plot sorts classes by their count before filtering, so it
    stays readable at 1000+ classes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = manifest["confidence_histogram"]
    edges = np.asarray(hist["edges"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", edgecolor="white")
    ax.axvline(
        manifest["threshold"],
        color="red",
        linestyle="--",
        label=f"threshold {manifest['threshold']}",
    )
    ax.set(
        xlabel="teacher confidence (max probability)",
        ylabel="records",
        title=f"{manifest['in']:,} records in",
    )
    ax.legend()
    names = [_save(fig, output_dir, "confidence_histogram.png")]

    per_class = manifest["per_class"]
    order = np.argsort([-p["total"] for p in per_class], kind="stable")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(per_class))
    for field, label in (
        ("total", "predicted (all)"),
        ("candidates", "above threshold"),
        ("copies", "after balancing"),
    ):
        ax.plot(x, [per_class[i][field] for i in order], label=label, drawstyle="steps-mid")
    ax.set(
        xlabel="class (sorted by predicted count)",
        ylabel="images",
        title=f"images per class, K={manifest['images_per_class'] or 'unbalanced'}"
        + (" (official rule)" if manifest.get("balance") == "official" else ""),
    )
    ax.legend()
    names.append(_save(fig, output_dir, "images_per_class.png"))
    return names


def _save(fig, output_dir: str, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    manifests.write_file(os.path.join(output_dir, name), buffer.getvalue())
    return name
