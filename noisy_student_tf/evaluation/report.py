"""The evaluation report of one or more models: report.json, a table and plots.

`evaluate_models` runs every model on the same images: clean accuracy and
calibration, the 15 corruptions x 5 severities (each corrupted set built
once and fed to every model and the baseline), perturbation flip rates and
FGSM / PGD. Models that read their images with different eval resizes (an
official checkpoint beside our own) each get the same sample in their own
view (`images` as {resize: images}). `robustness_report` is the one-model
entry point for the training loop. docs/evaluation.md describes every key
of report.json.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import tensorflow as tf

from noisy_student_tf import manifests
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.evaluation import adversarial, corruptions, metrics, perturbations, plots
from noisy_student_tf.models.artifact import as_artifact

CPU_SAMPLE = 200  # images per report when no accelerator is present (minutes, not hours)


def _key(number) -> str:
    """JSON object keys are strings: severity 3 -> "3", eps 2.0 -> "2", 0.5 -> "0.5"."""
    return f"{float(number):g}"


def _clean(logits, labels, num_classes):
    confusion = metrics.confusion_matrix(logits, labels, num_classes)
    calibration = metrics.calibration(metrics.softmax(logits), labels)
    return {
        "top1": metrics.top_k_accuracy(logits, labels, 1),
        "top5": metrics.top_k_accuracy(logits, labels, 5),
        "ece": calibration["ece"],
        "per_class_accuracy": metrics.per_class_accuracy(confusion),
        "confusion_matrix": confusion,
        "calibration_bins": calibration["bins"],
    }


def _check_size(model, images):
    if model.image_size is not None and model.image_size != images.shape[1]:
        raise ConfigError(
            f"model {model.name!r} takes {model.image_size} px images but the data is "
            f"{images.shape[1]} px; read the data at the model's size (--image_size)"
        )


def _say(log, text):
    if log:
        log(text)


def evaluate_models(
    models,
    images: np.ndarray,
    labels: np.ndarray,
    output_dir: str,
    *,
    baseline=None,
    class_names=None,
    corruption_names=tuple(corruptions.CORRUPTIONS),
    severities=corruptions.SEVERITIES,
    corrupted_source=None,
    perturbation_names=tuple(perturbations.PERTURBATIONS),
    frames: int = perturbations.FRAMES,
    eps=adversarial.PAPER_EPS,
    pgd_steps: int = adversarial.PGD_STEPS,
    pgd_step_size: float | None = None,
    seed: int = 0,
    batch_size: int = 128,
    log=print,
) -> dict:
    """Evaluates `models` side by side; writes report.json and plots into `output_dir`.

    Args:
      models: model paths (`models.open_model`), Keras models or ModelArtifacts
        (the first one's numbers are also the report's top-level keys).
      images: uint8 [N, S, S, 3] in the evaluation view, or {eval resize:
        the same sample in that view}, each model reading its `eval_resize`'s.
      labels: int [N].
      output_dir: created if needed.
      baseline: a model whose corruption errors normalise mCE (and flip
        rates, mFR); None leaves `mce` out and reports the raw mean flip rate.
      class_names: C names for the confusion plot, or None.
      corruption_names, severities: the corruption grid (empty: skipped).
      corrupted_source: `(name, severity) -> (images, labels) or None`, e.g.
        tfds cifar10_corrupted; None (or a None answer) applies our TF ops.
      perturbation_names, frames: ImageNet-P style sequences.
      eps: attack radii in 0-255 pixels (empty: no attack).
      pgd_steps, pgd_step_size: PGD settings (step None: 2.5 eps / steps).
      seed: corruption and PGD randomness.

    Returns:
      The report dict written to report.json.
    """
    start = time.time()
    images, labels = _views(images), np.asarray(labels, np.int64)
    corruption_names = corruptions.check_names(corruption_names)
    perturbation_names = perturbations.check_names(perturbation_names)
    eps = adversarial.check_eps(eps)
    served, base = _served_models(models, baseline, images, eps)
    everyone = served + ([base] if base is not None else [])
    tf.io.gfile.makedirs(output_dir)  # the loop's workdir may be a bucket
    reports, num_classes = _clean_reports(everyone, images, labels, batch_size)
    _say(log, "clean: " + ", ".join(f"{r['name']} {100 * r['top1']:.2f}%" for r in reports))
    sources = _corruptions(
        everyone,
        reports,
        images,
        labels,
        corruption_names,
        severities,
        corrupted_source,
        seed,
        batch_size,
        log,
    )
    _flip_rates(everyone, reports, images, perturbation_names, frames, batch_size, log)
    base_report = reports[len(served)] if base is not None else None
    _relative_to_baseline(reports[: len(served)], base_report)
    if eps:
        _attacks(
            served, reports, images, labels, eps, pgd_steps, pgd_step_size, seed, batch_size, log
        )
    model_reports = reports[: len(served)]
    _plot_reports(model_reports, output_dir, class_names)
    result = {
        **{k: v for k, v in model_reports[0].items()},
        "models": model_reports,
        "baseline": base_report,
        "settings": {
            **_settings(labels, images, num_classes, class_names, seed, base),
            "corruptions": corruption_names,
            "severities": [int(s) for s in severities],
            "corruption_source": sources,
            "perturbations": perturbation_names,
            "frames": frames,
            "eps": eps,
            "pgd_steps": pgd_steps,
            "pgd_step_size": pgd_step_size,
            "wall_s": round(time.time() - start, 1),
        },
    }
    result = _finite(result)
    manifests.write_file(os.path.join(output_dir, "report.json"), json.dumps(result, indent=1))
    _say(log, format_table(model_reports))
    return result


def _settings(labels, images, num_classes, class_names, seed, base) -> dict:
    """What was evaluated (the report's settings besides the grids)."""
    return {
        "num_examples": int(len(labels)),
        "image_size": int(next(iter(images.values())).shape[1]),
        "num_classes": int(num_classes),
        "class_names": list(class_names) if class_names else None,
        "seed": seed,
        "mce_baseline": base.source if base is not None else None,
    }


def _views(images) -> dict:
    """{eval resize: np.ndarray} of `evaluate_models`' `images` (an array serves every resize)."""
    if isinstance(images, dict):
        return {resize: np.asarray(view) for resize, view in images.items()}
    return {None: np.asarray(images)}


def _view(images: dict, model) -> np.ndarray:
    """The images `model` reads: its eval resize's view, else the only one."""
    if None in images:
        return images[None]
    resize = getattr(model, "eval_resize", "tf2")
    if resize not in images:
        raise ConfigError(
            f"model {model.name!r} reads the {resize!r} eval view but only "
            f"{sorted(images)} were loaded"
        )
    return images[resize]


def _served_models(models, baseline, images: dict, eps: list):
    """(served models, served baseline or None), checked against the images and attacks."""
    served = [as_artifact(m) for m in models]
    if not served:
        raise ConfigError("no model to evaluate; give at least one --model")
    names = [m.name for m in served]
    if len(set(names)) != len(names):  # two runs' saved_model folders share a basename
        for i, m in enumerate(served):
            m.name = f"{i}:{m.name}"
    base = as_artifact(baseline, name="baseline") if baseline is not None else None
    everyone = served + ([base] if base is not None else [])
    for m in everyone:
        _check_size(m, _view(images, m))
    if eps:
        for m in served:
            if not m.differentiable:
                raise ConfigError(
                    f"model {m.name!r} (signature {m.signature!r}) cannot be attacked: "
                    f"{m.why_not_differentiable}; pass --eps= to skip FGSM/PGD "
                    f"(docs/evaluation.md, 'Which signature')"
                )
    return served, base


def _clean_reports(everyone, images: dict, labels: np.ndarray, batch_size: int):
    """(one report per model with its clean-image metrics, the number of classes)."""
    logits = [m.predict(_view(images, m), batch_size) for m in everyone]
    num_classes = logits[0].shape[1]
    if labels.max(initial=0) >= num_classes:
        raise ConfigError(
            f"the data has label {labels.max()} but model {everyone[0].name!r} has "
            f"{num_classes} classes"
        )
    reports = [
        {
            "name": m.name,
            "source": m.source,
            "signature": m.signature,
            **_clean(z, labels, num_classes),
        }
        for m, z in zip(everyone, logits)
    ]
    return reports, num_classes


def _corruptions(
    everyone, reports, images, labels, names, severities, corrupted_source, seed, batch_size, log
) -> dict:
    """Top-1 per corruption and severity into each report; returns {name: "tfds" or "tf_ops"}."""
    sources = {}
    for report in reports:
        report["corruption"] = {}
    for name in names:
        for severity in severities:
            data = corrupted_source(name, severity) if corrupted_source else None
            sources[name] = "tfds" if data is not None else "tf_ops"
            corrupted = {}  # per view, built once for the models reading it
            for m, report in zip(everyone, reports):
                view = _view(images, m)
                if id(view) not in corrupted:
                    corrupted[id(view)] = data or _corrupted(
                        view, labels, name, severity, seed, batch_size
                    )
                x, corrupted_labels = corrupted[id(view)]
                z = m.predict(x, batch_size)
                accuracy = metrics.top_k_accuracy(z, corrupted_labels, 1)
                report["corruption"].setdefault(name, {})[_key(severity)] = accuracy
        _say(
            log,
            f"corruption {name}: "
            + ", ".join(
                f"{r['name']} {100 * np.mean(list(r['corruption'][name].values())):.1f}%"
                for r in reports
            ),
        )
    for report in reports:
        values = [a for c in report["corruption"].values() for a in c.values()]
        report["corruption_mean"] = float(np.mean(values)) if values else None
    return sources


def _corrupted(images, labels, name, severity, seed, batch_size):
    """(the corrupted copy of `images` made by our TF ops, labels)."""
    batches = corruptions.corrupted_dataset(images, labels, name, severity, seed, batch_size)
    return np.concatenate([x.numpy() for x, _ in batches]), labels


def _flip_rates(everyone, reports, images, perturbation_names, frames, batch_size, log) -> None:
    """ImageNet-P style flip rate per perturbation into each report."""
    for m, report in zip(everyone, reports):
        report["flip_rate"] = {
            p: metrics.flip_rate(
                perturbations.sequence_predictions(
                    lambda x, m=m: m.predict(x, batch_size),
                    _view(images, m),
                    p,
                    frames,
                    batch_size,
                )
            )
            for p in perturbation_names
        }
    if perturbation_names:
        _say(log, "flip rate: " + ", ".join(f"{r['name']} {r['flip_rate']}" for r in reports))


def _relative_to_baseline(model_reports: list, base_report: dict | None) -> None:
    """mCE and mFR of each model against the baseline (raw mean flip rate without one)."""
    for report in model_reports:
        if base_report is not None and report["corruption"]:
            report["corruption_errors"] = metrics.corruption_errors(
                report["corruption"], base_report["corruption"]
            )
            report["mce"] = metrics.mean_corruption_error(
                report["corruption"], base_report["corruption"]
            )
        if report["flip_rate"]:
            rates = report["flip_rate"]
            if base_report is not None:
                ratios = [
                    rates[p] / base_report["flip_rate"][p]
                    for p in rates
                    if base_report["flip_rate"][p] > 0
                ]
                report["mfr"] = float(100 * np.mean(ratios)) if ratios else float("nan")
            else:
                report["mfr"] = float(100 * np.mean(list(rates.values())))


def _attacks(
    served, reports, images, labels, eps, pgd_steps, pgd_step_size, seed, batch_size, log
) -> None:
    """FGSM and PGD accuracy per radius into each model's report."""
    for m, report in zip(served, reports):
        report["fgsm"] = {
            _key(e): a
            for e, a in adversarial.attack_accuracy(
                m.logits, _view(images, m), labels, eps, "fgsm", batch_size
            ).items()
        }
        report["pgd"] = {
            _key(e): a
            for e, a in adversarial.attack_accuracy(
                m.logits,
                _view(images, m),
                labels,
                eps,
                "pgd",
                batch_size,
                steps=pgd_steps,
                step_size=pgd_step_size,
                seed=seed,
            ).items()
        }
        _say(log, f"adversarial {m.name}: fgsm {report['fgsm']}, pgd {report['pgd']}")


def _plot_reports(model_reports: list, output_dir: str, class_names) -> None:
    """Reliability and confusion plots per model, and the comparison plot."""
    for i, report in enumerate(model_reports):
        stem = f"{i}_{_slug(report['name'])}" if len(model_reports) > 1 else "model"
        report["plots"] = {
            "reliability": f"{stem}_reliability.png",
            "confusion": f"{stem}_confusion.png",
        }
        plots.reliability_diagram(
            report["calibration_bins"],
            report["ece"],
            os.path.join(output_dir, report["plots"]["reliability"]),
            report["name"],
        )
        plots.confusion_plot(
            report["confusion_matrix"],
            os.path.join(output_dir, report["plots"]["confusion"]),
            report["name"],
            class_names,
        )
    plots.comparison_plot(model_reports, os.path.join(output_dir, "robustness.png"))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


def _finite(value):
    """NaN -> None, as JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def format_table(reports: list) -> str:
    """Models side by side: clean, calibration, corruption, stability and attack columns."""

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}"

    eps = sorted({e for r in reports for e in (r.get("fgsm") or {})}, key=float)
    header = ["model", "top-1", "top-5", "ECE", "C-acc", "mCE", "mFR"]
    header += [f"FGSM@{e}" for e in eps] + [f"PGD@{e}" for e in eps]
    rows = [header]
    for r in reports:
        row = [r["name"], pct(r["top1"]), pct(r["top5"]), pct(r["ece"])]
        row += [pct(r.get("corruption_mean"))]
        row += [f"{r['mce']:.1f}" if r.get("mce") is not None else "-"]
        row += [f"{r['mfr']:.1f}" if r.get("mfr") is not None else "-"]
        row += [pct((r.get("fgsm") or {}).get(e)) for e in eps]
        row += [pct((r.get("pgd") or {}).get(e)) for e in eps]
        rows.append(row)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        )
        for row in rows
    )


def default_sample() -> int:
    """CPU_SAMPLE without an accelerator, else 0 (every image)."""
    import tensorflow as tf

    return (
        0
        if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU")
        else CPU_SAMPLE
    )


def sample_images(images, labels, sample: int | None, seed: int = 0):
    """A seeded subset of `sample` (images, labels), in their order; None: `default_sample()`."""
    sample = default_sample() if sample is None else sample
    if sample < 0:
        raise ConfigError(f"robustness sample must be >= 0 (0 = all), got {sample}")
    images, labels = np.asarray(images), np.asarray(labels)
    if sample and sample < len(images):
        keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:sample])
        images, labels = images[keep], labels[keep]
    return images, labels


def robustness_report(
    model_or_saved_model_dir,
    images: np.ndarray,
    labels: np.ndarray,
    output_dir: str,
    sample: int | None = None,
    seed: int = 0,
    baseline=None,
    log=print,
    **options,
) -> dict:
    """The report of one model on a seeded sample of in-memory images (the loop's hook).

    Args:
      model_or_saved_model_dir: a Keras model, model file or folder, or ModelArtifact.
      images, labels: uint8 [N, S, S, 3] at the model's size, int [N].
      output_dir: where report.json and the plots go.
      sample: evaluate this many images, picked with `seed`; None:
        `default_sample()` (200 on CPU, all with an accelerator); 0: all.
      options: passed to `evaluate_models` (eps, corruption_names, ...).
    """
    images, labels = sample_images(images, labels, sample, seed)
    return evaluate_models(
        [model_or_saved_model_dir],
        images,
        labels,
        output_dir,
        baseline=baseline,
        seed=seed,
        log=log,
        **options,
    )
