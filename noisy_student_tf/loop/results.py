"""The loop's results: one row per model, printed as a table and plotted.

Row keys (results.json `models`): role, iteration, architecture, parameters,
test_top1, pseudo_label_accuracy (NaN where the unlabeled set has no true
labels), kept, dropped, dropped_below_threshold (None where the model did
not label an unlabeled set), wall_s, image_size (the side the model took:
trained, evaluated, labeled and exported at).
"""

from __future__ import annotations

import io
import math
import os

from noisy_student_tf import manifests


def _percent(value, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{100 * value:>{width - 1}.2f}%"


def _count(value, width: int) -> str:
    return f"{'-' if value is None else value:>{width}}"


def model_name(row: dict) -> str:
    if row["role"] == "fine_tune":
        return "fine-tuned"
    return "teacher" if row["role"] == "teacher" else f"student {row['iteration']}"


def format_table(rows: list) -> str:
    """A plain-text table of the results rows."""
    lines = [
        f"{'model':<12}{'architecture':<34}{'test top-1':>11}{'pseudo acc':>11}"
        f"{'kept':>7}{'dropped':>8}{'wall s':>8}"
    ]
    for r in rows:
        lines.append(
            f"{model_name(r):<12}{r['architecture']:<34}{_percent(r['test_top1'], 11)}"
            f"{_percent(r['pseudo_label_accuracy'], 11)}{_count(r['kept'], 7)}"
            f"{_count(r['dropped'], 8)}{r['wall_s']:>8.1f}"
        )
    return "\n".join(lines)


def plot(rows: list, path: str) -> None:
    """accuracy.png: test top-1 and pseudo-label accuracy per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def percent(value):
        return float("nan") if value is None else 100 * value

    x = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(x, [percent(r["test_top1"]) for r in rows], "o-", label="test top-1")
    ax.plot(
        x,
        [percent(r["pseudo_label_accuracy"]) for r in rows],
        "s--",
        label="pseudo-label accuracy (pool)",
    )
    ax.set_xticks(x, [model_name(r) for r in rows])
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    manifests.write_file(path, buffer.getvalue())  # the workdir may be a bucket


def robustness(config, sets, data, trained: list, workdir: str) -> dict:
    """Every model of the run side by side on a seeded test sample (docs/evaluation.md).

    `config.evaluate.robustness` turns it on. The teacher is the baseline, so
    the students' mCE and mFR read relative to it (100 = as robust as the
    teacher). Full report and plots: WORKDIR/robustness/.

    Args:
      sets: the loop's view of the data (streamed or in memory).
      data: what `data.sources.load` returned.
      trained: (name, checkpoint path, eval resize) per model, in loop order;
        each model reads the test sample in its own eval view.
    """
    import functools

    from noisy_student_tf import evaluation
    from noisy_student_tf.evaluation import corruptions, datasets
    from noisy_student_tf.models import open_model

    settings = config.evaluate
    if sets.streamed:
        images = {}
        for resize in sorted({resize for _, _, resize in trained}):
            images[resize], labels, _ = datasets.load_eval_data(
                config.data.test,
                sets.model_size(config.student),  # every model's (validate_config)
                settings.sample,
                config.seed,
                tfds_data_dir=config.data.get("path") or None,
                small_image=config.student.small_image,
                resize=resize,
            )
    else:  # arrays at the model's side: every eval view is the image itself
        images, labels = evaluation.sample_images(
            data.test_images, data.test_labels, settings.sample, config.seed
        )
    models = [open_model(p, name=name).with_eval_resize(r) for name, p, r in trained]
    report = evaluation.evaluate_models(
        models,
        images,
        labels,
        os.path.join(workdir, "robustness"),
        baseline=models[0] if len(models) > 1 else None,
        corruption_names=list(settings.corruptions) or list(corruptions.CORRUPTIONS),
        severities=list(settings.severities),
        eps=list(settings.eps),
        pgd_steps=settings.pgd_steps,
        seed=config.seed,
        log=functools.partial(print, flush=True) if config.verbose else None,
    )
    keys = ("top1", "ece", "corruption_mean", "mce", "mfr", "fgsm", "pgd")
    return {r["name"]: {k: r.get(k) for k in keys} for r in report["models"]}
