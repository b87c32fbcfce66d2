r"""Evaluate models: accuracy, calibration, corruptions, flips, FGSM/PGD.

  noisy-student-evaluate --model=WORKDIR/saved_model --data=/data/digits_test \
      --output_dir=/tmp/eval
  # side by side, mCE against a baseline, a tfds split
  noisy-student-evaluate --model=runs/a/saved_model,runs/b/saved_model \
      --baseline=runs/base/saved_model --data=tfds:cifar10:test \
      --tfds_data_dir=/data/tfds --tfds_corrupted=cifar10_corrupted --output_dir=/tmp/eval

Any SavedModel with a signature from float32 pixels [B, H, W, 3] in 0-255 to
logits works (docs/evaluation.md); only TensorFlow runs it. So does any other
model file `models.open_model` opens (a loop's `.keras` checkpoint, an official
TF1 checkpoint, ...). Each model reads the evaluation view with its own resize:
an official checkpoint the official one (TF1 bicubic, float pixels), as its
published accuracy was measured; the others TF2's. Writes
OUTPUT_DIR/report.json, robustness.png and per-model reliability and
confusion plots, and prints a table.
From a clone, `python tools/evaluate.py` takes the same flags. `--version`
prints the version.
"""

from absl import flags

from noisy_student_tf import cli
from noisy_student_tf.evaluation import adversarial, corruptions, datasets, perturbations, report
from noisy_student_tf.models import open_model

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "model", None, "SavedModel folder(s) or other model files, comma-separated.", required=True
)
flags.DEFINE_list("names", [], "Names for the models in the table (default: folder names).")
flags.DEFINE_string(
    "data", None, "Folder/glob of TFRecord shards, or tfds:NAME:SPLIT.", required=True
)
flags.DEFINE_string("output_dir", None, "Where report.json and plots go.", required=True)
flags.DEFINE_string("baseline", "", "Model whose corruption errors normalise mCE and mFR.")
flags.DEFINE_integer(
    "max_examples", -1, "Seeded sample size; 0 = all; -1 = 200 on CPU, all with a GPU/TPU."
)
flags.DEFINE_integer("seed", 0, "Sample, corruption and PGD seed.")
flags.DEFINE_integer("image_size", 0, "Evaluation side; 0 = the model's input size.")
flags.DEFINE_enum("small_image", "auto", ["auto", "true", "false"], "Evaluation view path.")
flags.DEFINE_string("signature", None, "Signature to use (default: see docs/evaluation.md).")
flags.DEFINE_string("tfds_data_dir", None, "tfds data_dir for tfds: data and --tfds_corrupted.")
flags.DEFINE_string(
    "tfds_corrupted", "", "tfds corrupted dataset (e.g. cifar10_corrupted) to use where prepared."
)
flags.DEFINE_list("corruptions", list(corruptions.CORRUPTIONS), "Corruptions; empty skips them.")
flags.DEFINE_list("severities", ["1", "2", "3", "4", "5"], "Corruption severities.")
flags.DEFINE_list("perturbations", list(perturbations.PERTURBATIONS), "Flip-rate sequences.")
flags.DEFINE_integer("frames", perturbations.FRAMES, "Frames per perturbation sequence.")
flags.DEFINE_list("eps", [str(e) for e in adversarial.PAPER_EPS], "Attack eps, 0-255 pixels.")
flags.DEFINE_integer("pgd_steps", adversarial.PGD_STEPS, "PGD iterations.")
flags.DEFINE_float("pgd_step_size", 0.0, "PGD step in pixels; 0 = 2.5 * eps / steps.")
flags.DEFINE_integer("batch_size", 128, "Images per model call.")
cli.check_ranges(
    {
        "max_examples": "[-1, inf)",
        "seed": "[0, inf)",
        "image_size": "[0, inf)",
        "frames": "[1, inf)",
        "eps": "[0, 255]",  # pixels (paper, Figure 7)
        "severities": "[1, 5]",  # ImageNet-C
        "pgd_steps": "[1, inf)",
        "pgd_step_size": "[0, inf)",
        "batch_size": "[1, inf)",
    }
)


def _numbers(flag, values, kind):
    try:
        return [kind(v) for v in values]
    except ValueError:
        raise cli.ConfigError(f"--{flag}={','.join(values)}: expected {kind.__name__}s") from None


def main(argv):
    del argv
    names = FLAGS.names or [None] * len(FLAGS.model)
    if len(names) != len(FLAGS.model):
        raise cli.ConfigError(f"--names has {len(names)} names for {len(FLAGS.model)} models")
    # Cheap checks first: loading a SavedModel takes seconds.
    datasets.check_spec(FLAGS.data)
    corruptions.check_names(FLAGS.corruptions)
    perturbations.check_names(FLAGS.perturbations)
    eps = adversarial.check_eps(_numbers("eps", FLAGS.eps, float))
    severities = _numbers("severities", FLAGS.severities, int)
    loaded = {}

    def load(path, name, setting="--model"):
        if path not in loaded:
            loaded[path] = open_model(path, signature=FLAGS.signature, setting=setting)
        served = loaded[path]
        return served.renamed(name or served.name)

    models = [load(p, n) for p, n in zip(FLAGS.model, names)]
    baseline = load(FLAGS.baseline, "baseline", "--baseline") if FLAGS.baseline else None
    sizes = {m.image_size for m in models + [baseline] if m is not None and m.image_size}
    if len(sizes) > 1:
        raise cli.ConfigError(
            f"the models take different image sizes {sorted(sizes)}; evaluate them apart"
        )
    size = FLAGS.image_size or (sizes.pop() if sizes else None)
    small = {"auto": None, "true": True, "false": False}[FLAGS.small_image]
    sample = report.default_sample() if FLAGS.max_examples < 0 else FLAGS.max_examples
    # The same seeded sample in each eval view the models read, loaded once per view.
    views = {}
    for resize in sorted({m.eval_resize for m in models + [baseline] if m is not None}):
        views[resize], labels, class_names = datasets.load_eval_data(
            FLAGS.data, size, sample, FLAGS.seed, FLAGS.tfds_data_dir, small, resize
        )
    images = next(iter(views.values()))
    print(f"evaluating {len(models)} model(s) on {len(labels)} images of {FLAGS.data}", flush=True)
    corrupted = None
    if FLAGS.tfds_corrupted:
        corrupted = datasets.tfds_corrupted_loader(
            FLAGS.tfds_corrupted, FLAGS.tfds_data_dir, images.shape[1], sample, FLAGS.seed
        )
    report.evaluate_models(
        models,
        views,
        labels,
        FLAGS.output_dir,
        baseline=baseline,
        class_names=class_names,
        corruption_names=FLAGS.corruptions,
        severities=severities,
        corrupted_source=corrupted,
        perturbation_names=FLAGS.perturbations,
        frames=FLAGS.frames,
        eps=eps,
        pgd_steps=FLAGS.pgd_steps,
        pgd_step_size=FLAGS.pgd_step_size or None,
        seed=FLAGS.seed,
        batch_size=FLAGS.batch_size,
        log=lambda line: print(line, flush=True),
    )
    print(f"wrote {FLAGS.output_dir}/report.json", flush=True)


def run() -> None:
    """The command's entry point (noisy_student_tf.commands)."""
    cli.run(main)
