r"""Write source shards (PREFIX-00000-of-NNNNN.tfrecord) from images or tfds.

  # labeled folder tree (class_name/*.jpg|png) or a flat folder (unlabeled)
  noisy-student-make-records --input=/data/images --output_dir=/data/src \
      --num_shards=128
  # a tfds split
  noisy-student-make-records --input=tfds:cifar10:train --output_dir=/data/c10

  # a validation folder: ids by class name from the training shards' map
  noisy-student-make-records --input=/data/val --output_dir=/data/src_val \
      --class_map=/data/src/class_map.json

Images that fail to decode are skipped and counted; output_dir/manifest.json
holds the counts and the class list, output_dir/class_map.json the class
name -> id map. An earlier map (--class_map, or output_dir/class_map.json
when it exists) gives the ids by name; a class it lacks is refused.
Schema: docs/data_format.md.
From a clone, `python tools/make_records.py` takes the same flags. `--version`
prints the version.
"""

import os

from absl import flags, logging

from noisy_student_tf import cli
from noisy_student_tf.data import ingest

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "An image folder, or tfds:NAME:SPLIT.", required=True)
flags.DEFINE_string("output_dir", None, "Where shards and manifest.json go.", required=True)
flags.DEFINE_integer("num_shards", 1, "Number of output shards.")
flags.DEFINE_string("prefix", "train", "Shard file name prefix.")
flags.DEFINE_string("tfds_data_dir", None, "tfds data_dir for tfds: inputs.")
flags.DEFINE_string(
    "class_map",
    "",
    "class_map.json of earlier shards whose ids these must share; default: "
    "output_dir/class_map.json when it exists.",
)
cli.check_ranges({"num_shards": "[1, inf)"})


def main(argv):
    del argv
    existing = os.path.join(FLAGS.output_dir, ingest.CLASS_MAP)
    map_path = FLAGS.class_map or (existing if os.path.exists(existing) else "")
    class_map = ingest.read_class_map(map_path) if map_path else None
    if FLAGS.input.startswith("tfds:"):
        parts = FLAGS.input.split(":")
        if len(parts) != 3:
            raise cli.ConfigError(f"--input={FLAGS.input!r}: expected tfds:NAME:SPLIT")
        classes, items = ingest.tfds_items(parts[1], parts[2], FLAGS.tfds_data_dir)
        ids = ingest.class_ids(classes, class_map, f"--input={FLAGS.input}")
        if any(ids[name] != i for i, name in enumerate(classes)):
            raise cli.ConfigError(f"--input={FLAGS.input}: its label ids differ from {map_path}")
    else:
        classes, items = ingest.folder_items(FLAGS.input, class_map)
    manifest = ingest.write_source_shards(
        items, FLAGS.output_dir, FLAGS.num_shards, FLAGS.prefix, classes
    )
    if classes:
        ingest.write_class_map(FLAGS.output_dir, {name: i for i, name in enumerate(classes)})
    logging.info(
        "wrote %d records (%s skipped) to %s",
        manifest["written"],
        manifest["skipped"] or "none",
        FLAGS.output_dir,
    )


def run() -> None:
    """The command's entry point (noisy_student_tf.commands)."""
    cli.run(main)
