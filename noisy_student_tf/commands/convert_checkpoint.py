r"""Write an official EfficientNet / Noisy Student checkpoint as Keras files.

  # tensorflow/tpu's release, unpacked:
  #   https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-b0.tar.gz
  noisy-student-convert --checkpoint=/data/noisy_student_efficientnet-b0 \
      --output_dir=/data/keras
  # AdvProp checkpoints (inputs scaled to [-1, 1]); the L2-475 release at 475 px:
  noisy-student-convert --checkpoint=... --output_dir=... --release=advprop
  noisy-student-convert --checkpoint=.../noisy_student_efficientnet-l2_475 \
      --output_dir=... --image_size=475

Writes NAME.keras (plain `keras.models.load_model` opens it) and, for B0-B7,
NAME.weights.h5 for keras.applications' `EfficientNetBx(weights=None,
classifier_activation=None).load_weights(...)`, then prints the variant,
the resolution, the evaluation preprocessing and the published top-1 the
model should reach (noisy_student_tf/models/convert.py; docs/models.md).
From a clone, `python tools/convert_checkpoint.py` takes the same flags. `--version`
prints the version.
"""

from absl import flags

from noisy_student_tf import cli
from noisy_student_tf.models import convert

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "checkpoint", None, "Official checkpoint folder (or its model.ckpt prefix).", required=True
)
flags.DEFINE_string("output_dir", None, "Where NAME.keras and NAME.weights.h5 go.", required=True)
flags.DEFINE_enum(
    "release",
    "noisy_student",
    list(convert.PUBLISHED_TOP1),
    "Which release the checkpoint is: its input statistics and published top-1.",
)
flags.DEFINE_integer("image_size", 0, "Input side; 0: the variant's resolution.", lower_bound=0)
flags.DEFINE_string("name", None, "File name stem (default: the checkpoint folder's name).")


def main(argv):
    del argv
    export = convert.convert_for_keras(
        FLAGS.checkpoint,
        FLAGS.output_dir,
        release=FLAGS.release,
        image_size=FLAGS.image_size or None,
        name=FLAGS.name,
    )
    print("\n".join(export.lines()))


def run() -> None:
    """The command's entry point (noisy_student_tf.commands)."""
    cli.run(main)
