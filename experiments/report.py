"""Tables and plots for docs/results.md from finished loop workdirs.

  python experiments/report.py --output_dir=docs/img/cifar10_4k \
      --runs=full=runs/cifar10_4k_cpu,no_randaugment=runs/abl_no_randaugment \
      --seed_runs=runs/cifar10_4k_cpu,runs/cifar10_4k_cpu_s1,runs/cifar10_4k_cpu_s2

Reads each workdir's results.json (and, for the first run, its per-iteration
pool probabilities and selection manifest) and writes:
- a markdown table of every model of every run (printed);
- the first run's accuracy per iteration (accuracy.png), and for its
  teacher's labels the confidence histogram and the per-class counts before
  and after balancing (confidence_histogram.png, images_per_class.png);
- with --seed_runs, the mean and spread of each model's test top-1 over the
  seeds (printed).
Nothing here trains or predicts: it only reads what the loop wrote.
"""

import json
import os
import shutil

import numpy as np
from absl import flags

from noisy_student_tf import cli
from noisy_student_tf.labeling import report
from noisy_student_tf.loop import data_modes

_RUNS = flags.DEFINE_list("runs", [], "name=workdir pairs; the first one is plotted.")
_SEED_RUNS = flags.DEFINE_list("seed_runs", [], "Workdirs of one config on different seeds.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "", "Where the plots go.")
_HIST_BINS = 20


def _results(workdir: str) -> dict:
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--runs: {path} does not exist (is the run finished?)")
    with open(path) as f:
        return json.load(f)


def _model_name(row: dict) -> str:
    return "teacher" if row["role"] == "teacher" else f"student {row['iteration']}"


def pool_probabilities(workdir: str, iteration: int) -> np.ndarray:
    """The probabilities model `iteration` gave the pool, float32 [N, C].

    The loop writes iteration_I_pool_labels.npz (data_modes.write_pool_labels;
    in via_records mode from the labeled shards the student's selection was
    made from); runs made before it wrote iteration_I_pool_probabilities.npy.
    """
    path = data_modes.pool_labels_path(workdir, iteration)
    if os.path.exists(path):
        return data_modes.read_pool_labels(path)["probs"]
    return np.load(os.path.join(workdir, f"iteration_{iteration}_pool_probabilities.npy"))


def pool_manifest(workdir: str, iteration: int) -> dict:
    """The manifest `labeling.report.plot_filter_balance` reads, from what the loop kept.

    The loop stores the pool's labels and the selection's per-class
    counts; the histogram and the per-class totals (all predictions, before
    the threshold) are computed from the probabilities.
    """
    probs = pool_probabilities(workdir, iteration)
    with open(os.path.join(workdir, f"iteration_{iteration}_selection.json")) as f:
        selection = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
        pseudo = json.load(f)["pseudo"]
    predicted = probs.argmax(-1)
    counts, edges = np.histogram(probs.max(-1), bins=_HIST_BINS, range=(0.0, 1.0))
    per_class = [
        dict(row, total=int(np.sum(predicted == row["class"]))) for row in selection["per_class"]
    ]
    return {
        "in": int(len(probs)),
        "threshold": pseudo["threshold"],
        "images_per_class": pseudo["images_per_class"],
        "balance": pseudo.get("balance", "exact"),
        "per_class": per_class,
        "confidence_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def main(argv):
    if len(argv) > 1:
        raise cli.ConfigError(f"unexpected arguments: {argv[1:]}")
    runs = []
    for item in _RUNS.value:
        name, sep, workdir = item.partition("=")
        if not sep:
            raise cli.ConfigError(f"--runs: expected name=workdir, got {item!r}")
        runs.append((name, workdir, _results(workdir)))
    print("| run | model | test top-1 | pseudo-label acc. | kept | wall s |")
    print("|---|---|---|---|---|---|")
    for name, _, results in runs:
        for row in results["models"]:
            print(
                f"| {name} | {_model_name(row)} | {100 * row['test_top1']:.2f}% | "
                f"{100 * row['pseudo_label_accuracy']:.2f}% | {row['kept']} | {row['wall_s']:.0f} |"
            )
    if _SEED_RUNS.value:
        by_model = {}
        for workdir in _SEED_RUNS.value:
            rows = _results(workdir)["models"]
            teacher = 100 * rows[0]["test_top1"]
            for row in rows:
                by_model.setdefault(_model_name(row), []).append(100 * row["test_top1"])
            # Paired within a seed: the claims are about gains over the teacher.
            for row in rows[1:]:
                by_model.setdefault(f"{_model_name(row)} - teacher", []).append(
                    100 * row["test_top1"] - teacher
                )
        print("\n| model (test top-1) | seeds | mean | std | min | max |")
        print("|---|---|---|---|---|---|")
        for model, values in by_model.items():
            v = np.asarray(values)
            spread = v.std(ddof=1) if len(v) > 1 else 0.0
            if model.endswith(" - teacher"):
                cells = [f"{x:+.2f} points" for x in (v.mean(), v.min(), v.max())]
            else:
                cells = [f"{x:.2f}%" for x in (v.mean(), v.min(), v.max())]
            print(f"| {model} | {len(v)} | {cells[0]} | {spread:.2f} | {cells[1]} | {cells[2]} |")
    if _OUTPUT_DIR.value and runs:
        os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
        _, workdir, _ = runs[0]
        shutil.copy(os.path.join(workdir, "accuracy.png"), _OUTPUT_DIR.value)
        names = report.plot_filter_balance(pool_manifest(workdir, 0), _OUTPUT_DIR.value)
        print(f"\nwrote accuracy.png, {', '.join(names)} into {_OUTPUT_DIR.value}")


if __name__ == "__main__":
    cli.run(main)
