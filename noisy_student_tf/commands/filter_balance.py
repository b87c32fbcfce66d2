r"""Filter pseudo-labeled shards by confidence and balance classes (Apache Beam).

  noisy-student-filter-balance --input=/data/labeled --output_dir=/data/pseudo \
      --threshold=0.3 --images_per_class=130000 --num_output_shards=1024 --seed=0
  # the official code's rule (per-class threshold, per-image coin flips):
  noisy-student-filter-balance ... --balance=official
  # other runners take Beam's own options after the flags:
  noisy-student-filter-balance ... -- --runner=DataflowRunner --project=P ...

The rule (paper section 2; noisy_student_tf/labeling/select.py): drop records
below --threshold, then balance every class to --images_per_class (K).
--balance=exact (default): a class with more than K candidates keeps its K
most confident; a class with fewer gives each candidate floor(K/n) copies
and a seeded choice of K mod n of them one more. --balance=official: as the
official filter_unlabel.py, K on average. The class count comes from the
labeling manifests or the records' teacher/probs; --num_classes is needed
only for top-k records without a manifest (and is checked otherwise).
Output: shuffled shards, manifest.json (per class candidates/kept/copies;
in = kept + dropped by reason) and two plots. Same seed, same bytes.
From a clone, `python tools/filter_balance.py` takes the same flags. `--version`
prints the version.
"""

import tensorflow as tf
from absl import flags

from noisy_student_tf import cli
from noisy_student_tf.data import records, schema
from noisy_student_tf.labeling import beam_filter
from noisy_student_tf.labeling.select import BALANCE_MODES

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Glob or folder of pseudo-labeled shards.", required=True)
flags.DEFINE_string(
    "output_dir", None, "Where balanced shards and manifest.json go.", required=True
)
flags.DEFINE_float("threshold", 0.3, "Minimum teacher confidence (paper: 0.3).")
flags.DEFINE_integer("images_per_class", 0, "K per class (paper: 130000); 0: no balancing.")
flags.DEFINE_enum(
    "balance",
    "exact",
    BALANCE_MODES,
    "exact: K records per class; official: the official code's per-class "
    "threshold and coin flips (K on average).",
)
flags.DEFINE_integer("num_output_shards", 16, "Output shards.")
flags.DEFINE_integer("seed", 0, "Seed of the duplication choice and the output order.")
flags.DEFINE_integer(
    "num_classes",
    0,
    "Teacher classes; 0 infers it from the labeling manifests or teacher/probs. "
    "Set, it must agree with them.",
)
flags.DEFINE_bool("check_images", False, "Also decode every image, dropping bad ones.")
flags.DEFINE_string("prefix", "pseudo", "Output shard name prefix.")
cli.check_ranges(
    {
        "threshold": "[0, 1]",
        "images_per_class": "[0, inf)",
        "num_output_shards": "[1, inf)",
        "seed": "[0, inf)",
        "num_classes": "[0, inf)",
    }
)
flags.register_validator(
    "num_classes", lambda n: n != 1, "--num_classes must be 0 (inferred) or >= 2, got 1"
)


def _check_pseudo_labeled(files: list[str]) -> None:
    """Refuses source shards (no teacher view): every record would be dropped, silently.

    Reads up to the first record that parses (a bad one is the pipeline's to
    count), in the first non-empty shard.
    """
    for path in files:
        for index, serialized in enumerate(records.read_records(path)):
            try:
                feature = tf.train.Example.FromString(serialized).features.feature
            except Exception:  # noqa: BLE001 - unparseable: dropped and counted later
                continue
            if schema.TEACHER_LABEL not in feature:
                raise cli.ConfigError(
                    f"{path}: record {index} has no {schema.TEACHER_LABEL}; --input must be "
                    "pseudo-labeled shards (the --output_dir of noisy-student-label), not source shards"
                )
            return


def main(argv):
    files = records.list_files(FLAGS.input)
    _check_pseudo_labeled(files)
    manifest = beam_filter.run_filter_balance(
        files,
        FLAGS.output_dir,
        FLAGS.num_classes or None,
        threshold=FLAGS.threshold,
        images_per_class=FLAGS.images_per_class,
        num_output_shards=FLAGS.num_output_shards,
        seed=FLAGS.seed,
        check_images=FLAGS.check_images,
        output_prefix=FLAGS.prefix,
        pipeline_args=argv[1:],
        balance=FLAGS.balance,
    )
    print(
        f"{manifest['in']} in = {manifest['kept_unique']} kept + {manifest['num_dropped']} "
        f"dropped {manifest['dropped']}; {manifest['out_records']} records out"
    )


def run() -> None:
    """The command's entry point (noisy_student_tf.commands)."""
    cli.run(main)
