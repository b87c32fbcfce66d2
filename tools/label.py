r"""Label source shards with a teacher: pseudo-labeled shards, one per input shard.

  python tools/label.py --input=/data/src --output_dir=/data/labeled \
      --teacher=/work/iteration_0_teacher.keras --topk=10 \
      --shard_index=$TASK_ID --num_shards=$NUM_TASKS --strategy=mirrored

The teacher is a training-loop checkpoint (.keras), an exported SavedModel
folder, or an official TF1 EfficientNet / Noisy Student checkpoint. Each output shard is written to a temporary name and renamed when
complete, then its PATH.manifest.json (counts and labeling settings) is
written; rerunning skips complete shards, so a killed job resumes without
duplicated or missing records. A complete shard labeled with other settings
(another teacher, --soft, --temperature, --topk) stops the rerun with an
error naming the setting; --overwrite relabels such shards instead.
output_dir/manifest.json aggregates the per-shard manifests. Records that
fail to parse or decode are skipped and counted; a read fault (corrupted
file) fails the shard. Schema: docs/data_format.md.
"""

from absl import flags

from noisy_student_tf import cli
from noisy_student_tf.data import records
from noisy_student_tf.labeling import shards
from noisy_student_tf.training.strategy import STRATEGIES, get_strategy

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Glob or folder of source shards.", required=True)
flags.DEFINE_string("output_dir", None, "Where labeled shards and manifests go.", required=True)
flags.DEFINE_string(
    "teacher",
    None,
    ".keras checkpoint, SavedModel folder, or official TF1 EfficientNet checkpoint "
    "(prefix or folder).",
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


def main(argv):
    del argv
    summary = shards.label_shards(
        FLAGS.teacher,
        records.list_files(FLAGS.input),
        FLAGS.output_dir,
        soft=FLAGS.soft,
        temperature=FLAGS.temperature,
        topk=FLAGS.topk,
        shard_index=FLAGS.shard_index,
        num_shards=FLAGS.num_shards,
        batch_size=FLAGS.batch_size,
        strategy=get_strategy(FLAGS.strategy, FLAGS.tpu),
        output_prefix=FLAGS.prefix,
        overwrite=FLAGS.overwrite,
    )
    print(
        f"labeled {summary['labeled']} of {summary['records_in']} records in "
        f"{summary['shards_complete']}/{summary['num_shards']} complete shards; "
        f"skipped {summary['skipped'] or 'none'}"
    )


if __name__ == "__main__":
    cli.run(main)
