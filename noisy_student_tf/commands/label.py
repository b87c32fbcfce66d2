r"""Label source shards with a teacher: pseudo-labeled shards, one per input shard.

  noisy-student-label --input=/data/src --output_dir=/data/labeled \
      --teacher=/work/iteration_0_teacher.keras --topk=10 \
      --shard_index=$TASK_ID --num_shards=$NUM_TASKS --strategy=mirrored

  # the same labeling as an Apache Beam pipeline (Beam's options after --):
  noisy-student-label --input=... --output_dir=... --teacher=... --engine=beam \
      --runner=DataflowRunner -- --project=P --region=R --temp_location=gs://...

The teacher is a training-loop checkpoint (.keras), an exported SavedModel
folder, an official TF1 EfficientNet / Noisy Student checkpoint, or a
keras.applications EfficientNetB0-B7 weights file (.h5, .weights.h5; the
variant is read from its weight shapes; --image_size sets the input side of
the last two, default the variant's resolution). The teacher labels each
image on the evaluation view (center crop + bicubic resize for large images,
as the official predict_label.py; an official checkpoint with the official
TF1 resize; --small_image picks the 32 px path). Each output shard is
written to a temporary name and renamed when complete, then its PATH.manifest.json (counts and labeling settings) is
written; rerunning skips complete shards, so a killed job resumes without
duplicated or missing records. A complete shard labeled with other settings
(another teacher, --soft, --temperature, --topk, the view) stops the rerun with an
error naming the setting; --overwrite relabels such shards instead.
output_dir/manifest.json aggregates the per-shard manifests. Records that
fail to parse or decode are skipped and counted; a read fault (corrupted
file) fails the shard. Schema: docs/data_format.md. --engine=beam writes the
same files and manifests with the same reuse/refuse/--overwrite rules
(noisy_student_tf/labeling/beam_label.py); Beam spreads the shards itself,
so --shard_index/--num_shards/--strategy stay at their defaults there.
From a clone, `python tools/label.py` takes the same flags. `--version`
prints the version.
"""

from absl import flags

from noisy_student_tf import cli
from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data import records
from noisy_student_tf.labeling import beam_label, shards
from noisy_student_tf.training.strategy import STRATEGIES, get_strategy

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Glob or folder of source shards.", required=True)
flags.DEFINE_string("output_dir", None, "Where labeled shards and manifests go.", required=True)
flags.DEFINE_string(
    "teacher",
    None,
    ".keras checkpoint, SavedModel folder, official TF1 EfficientNet checkpoint "
    "(prefix or folder), or keras.applications EfficientNet weights (.h5, .weights.h5).",
    required=True,
)
flags.DEFINE_bool("soft", True, "Store the soft distribution (--nosoft: one-hot argmax).")
flags.DEFINE_float("temperature", 1.0, "Soft labels are softmax(logits / temperature).")
flags.DEFINE_integer("topk", 0, "Store the k most probable classes; 0 stores all.")
flags.DEFINE_integer("shard_index", 0, "This job's index in the job array.")
flags.DEFINE_integer(
    "num_shards", 1, "Jobs in the array; job i takes input shards j with j % num_shards == i."
)
flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy in this job.")
flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.")
flags.DEFINE_integer("batch_size", 256, "Images per teacher call (global).")
flags.DEFINE_string("prefix", "labeled", "Output shard name prefix.")
flags.DEFINE_bool(
    "overwrite", False, "Relabel complete shards that were labeled with other settings."
)
flags.DEFINE_integer(
    "image_size",
    0,
    "Input side of a teacher built from weights (official, keras.applications); "
    "0: the variant's resolution. A .keras/SavedModel teacher keeps its own.",
)
flags.DEFINE_enum(
    "small_image",
    "auto",
    ["auto", "true", "false"],
    "The teacher's view: the small-image (32 px) or large-image eval path; auto: by size.",
)
flags.DEFINE_enum(
    "engine", "job_array", ("job_array", "beam"), "job_array: this process; beam: Apache Beam."
)
flags.DEFINE_string("runner", "DirectRunner", "Beam runner for --engine=beam.")
cli.check_ranges(
    {
        "temperature": "(0, inf)",
        "topk": "[0, inf)",
        "shard_index": "[0, inf)",
        "num_shards": "[1, inf)",
        "batch_size": "[1, inf)",
        "image_size": "[0, inf)",
    }
)
flags.register_multi_flags_validator(
    ["shard_index", "num_shards"],
    lambda f: f["num_shards"] < 1 or f["shard_index"] < f["num_shards"],
    "--shard_index must be below --num_shards (job i of a num_shards-job array)",
)


def main(argv):
    if FLAGS.engine == "beam":
        for name, default in (("shard_index", 0), ("num_shards", 1), ("strategy", "default")):
            if FLAGS[name].value != default:
                raise ConfigError(
                    f"--{name}={FLAGS[name].value} is for --engine=job_array; Beam spreads "
                    f"the shards over its workers itself (leave --{name}={default})"
                )
        args, kwargs = _labeling_args()
        summary = beam_label.label_with_beam(
            *args, pipeline_args=[f"--runner={FLAGS.runner}", *argv[1:]], **kwargs
        )
    elif argv[1:]:
        raise ConfigError(
            f"unexpected arguments {argv[1:]}: Beam options are for --engine=beam only"
        )
    else:
        summary = _label_job_array()
    print(
        f"labeled {summary['labeled']} of {summary['records_in']} records in "
        f"{summary['shards_complete']}/{summary['num_shards']} complete shards; "
        f"skipped {summary['skipped'] or 'none'}"
    )


def _labeling_args():
    """The teacher, inputs, output and label settings both engines take, from the flags."""
    return (
        FLAGS.teacher,
        records.list_files(FLAGS.input),
        FLAGS.output_dir,
        FLAGS.soft,
        FLAGS.temperature,
        FLAGS.topk,
    ), dict(
        batch_size=FLAGS.batch_size,
        output_prefix=FLAGS.prefix,
        overwrite=FLAGS.overwrite,
        image_size=FLAGS.image_size or None,
        small_image={"auto": None, "true": True, "false": False}[FLAGS.small_image],
    )


def _label_job_array():
    args, kwargs = _labeling_args()
    return shards.label_shards(
        *args,
        shard_index=FLAGS.shard_index,
        num_shards=FLAGS.num_shards,
        strategy=get_strategy(FLAGS.strategy, FLAGS.tpu),
        **kwargs,
    )


def run() -> None:
    """The command's entry point (noisy_student_tf.commands)."""
    cli.run(main)
