r"""Filter pseudo-labeled shards by confidence and balance classes (Apache Beam).

  python tools/filter_balance.py --input=/data/labeled --output_dir=/data/pseudo \
      --threshold=0.3 --images_per_class=130000 --num_output_shards=1024 --seed=0
  # other runners take Beam's own options after the flags:
  python tools/filter_balance.py ... -- --runner=DataflowRunner --project=P ...

The rule (paper section 2; noisy_student_tf/labeling/select.py): drop records
below --threshold; a class with more than --images_per_class candidates keeps
its most confident; a class with fewer gives each candidate floor(K/n)
copies and a seeded choice of K mod n of them one more. Output: shuffled
shards, manifest.json (per class candidates/kept/copies; in = kept +
dropped by reason) and two plots. Same seed, same bytes.
"""

import os

from absl import app, flags

from noisy_student_tf.data import records
from noisy_student_tf.labeling import beam_filter

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Glob or folder of pseudo-labeled shards.", required=True)
flags.DEFINE_string("output_dir", None, "Where balanced shards and manifest.json go.",
                    required=True)
flags.DEFINE_float("threshold", 0.3, "Minimum teacher confidence (paper: 0.3).")
flags.DEFINE_integer("images_per_class", 0, "K per class (paper: 130000); 0: no balancing.")
flags.DEFINE_integer("num_output_shards", 16, "Output shards.")
flags.DEFINE_integer("seed", 0, "Seed of the duplication choice and the output order.")
flags.DEFINE_integer("num_classes", 0, "Teacher classes; 0 reads it from the input "
                     "folder's manifest.json (written by tools/label.py).")
flags.DEFINE_bool("check_images", False, "Also decode every image, dropping bad ones.")
flags.DEFINE_string("prefix", "pseudo", "Output shard name prefix.")


def _num_classes(input_files):
    if FLAGS.num_classes:
        return FLAGS.num_classes
    manifest = os.path.join(os.path.dirname(input_files[0]), "manifest.json")
    num_classes = records.read_json(manifest).get("num_classes") if os.path.exists(
        manifest) else None
    if num_classes:
        return int(num_classes)
    raise app.UsageError(f"--num_classes is not set and {manifest!r} does not give it")


def main(argv):
    files = records.list_files(FLAGS.input)
    manifest = beam_filter.run_filter_balance(
        files, FLAGS.output_dir, _num_classes(files), threshold=FLAGS.threshold,
        images_per_class=FLAGS.images_per_class, num_output_shards=FLAGS.num_output_shards,
        seed=FLAGS.seed, check_images=FLAGS.check_images, output_prefix=FLAGS.prefix,
        pipeline_args=argv[1:])
    print(f"{manifest['in']} in = {manifest['kept_unique']} kept + {manifest['num_dropped']} "
          f"dropped {manifest['dropped']}; {manifest['out_records']} records out")


if __name__ == "__main__":
    app.run(main)
