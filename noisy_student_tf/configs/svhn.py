"""Noisy Student on SVHN: the official example (google-research/noisystudent).

  python experiments/noisy_student.py --config=experiments/configs/svhn.py \
      --config.data.path=/data/tfds --workdir=runs/svhn
  python experiments/noisy_student.py --config=experiments/configs/svhn.py:offline ...
  python experiments/noisy_student.py --config=experiments/configs/svhn.py:smoke \
      --config.data.labeled=DIR --config.data.unlabeled=DIR --config.data.test=DIR

Official README: the supervised EfficientNet-B0 teacher reaches 97.9% test
accuracy, one Noisy Student B0 student 98.6 +- 0.1%. Variants
(comma-separated):

- default: local_scripts/svhn/run.sh: the teacher labels every image of
  SVHN's 531,131-image `extra` split (no confidence filter, no balancing;
  run.sh's teacher runs on the fly, here its labels go through shards,
  which gives the same targets: the official teacher saw the clean
  eval-preprocessed image either way, data_input.py).
- `offline`: local_scripts/svhn/filter_unlabel.sh + svhn_offline.sh:
  confidence >= 0.3 and 53,113 images per class (the official balancing).
- `smoke`: the same code path at toy sizes (width and depth x1/8, a few
  steps, default strategy, float32); it needs small record folders in
  data.labeled/unlabeled/test, such as tests/test_configs.py writes.

The official teacher was downloaded, not trained by the scripts
(prepro.sh), so its recipe is not published; here iteration 0 trains one
with the student's settings. To start from the official teacher instead,
convert it and pass it as `teacher_checkpoint`:

  python -c "from noisy_student_tf.models import convert_official_checkpoint as c; \
      c('ckpt/teacher_ckpt/model.ckpt', normalization='svhn', small_image=True, \
      image_size=32).save('svhn_teacher.keras')"
  ... --config.teacher_checkpoint=svhn_teacher.keras

Sources cited below: "run.sh" = local_scripts/svhn/run.sh (identical
training flags in svhn_offline.sh); "main.py" = noisystudent main.py (flag
defaults and its `task_name == 'svhn'` settings); "task_info" =
task_info.py; "preprocessing" = preprocessing.py.
"""

from noisy_student_tf.configs import digits
from noisy_student_tf.errors import ConfigError

VARIANTS = ("offline", "smoke")
# main.py --train_steps default (109,474, not overridden by run.sh) at
# --train_batch_size=128 over task_info's 69,257 labeled images:
# 109474 * 128 / 69257 = 202.3 epochs.
EPOCHS = 202
SMOKE_SCALE = 0.125  # smoke: width and depth x1/8


def parse_arg(arg):
    """`"offline,smoke"` -> {"offline", "smoke"}."""
    tokens = {t.strip() for t in (arg or "").split(",") if t.strip()}
    unknown = sorted(tokens - set(VARIANTS))
    if unknown:
        raise ConfigError(
            f"svhn.py:{arg}: expected nothing, or any of {', '.join(VARIANTS)} "
            f"comma-separated; got {', '.join(unknown)}"
        )
    return tokens


def svhn_model(digits):
    """The official SVHN model block: small-image EfficientNet-B0, RandAugment M=5."""
    block = digits.model(
        dropout_rate=0.2,  # efficientnet_builder: B0's dropout (run.sh keeps it)
        final_survival_prob=0.8,  # efficientnet_builder stochastic_depth_rate=0.2
        magnitude=5,  # run.sh --augment_name=v1 --randaug_mag=5
        flip=False,  # preprocessing: no flip when task_name == 'svhn'
        extra_cutout=True,  # preprocessing: Cutout of side 16 px after RandAugment
    )
    block.architecture = "efficientnet-b0"  # run.sh --model_name
    block.width_coefficient = 1.0  # B0 (efficientnet_builder)
    block.depth_coefficient = 1.0
    block.small_image = True  # main.py: task svhn sets small_image_model=True
    block.batch_norm_momentum = 0.99  # efficientnet_builder
    block.randaugment_layers = 2  # main.py --randaug_layer default
    block.randaugment_variant = "official"  # the op levels the official run used
    block.cutout = True  # main.py --cutout_op=True: Cutout among RandAugment's ops
    block.normalization = "svhn"  # task_info.get_mean_std('svhn'): SVHN's mean/std
    return block


def get_config(arg=None):
    variants = parse_arg(arg)
    config = digits.get_config()
    config.strategy = "default"  # run.sh --use_tpu=False (one GPU)
    config.precision = "float32"  # run.sh --use_bfloat16=False
    config.num_iterations = 1  # run.sh: one student

    data = config.data
    data.source = "stream"
    # task_info: 73,257 - 4,000 labeled; the official held out a random 4,000
    # (proc_svhn.py, numpy seed 0) as a dev set; here the first 4,000.
    data.labeled = "tfds:svhn_cropped:train[4000:]"
    data.unlabeled = "tfds:svhn_cropped:extra"  # proc_svhn.py: the 531,131 `extra` images
    data.test = "tfds:svhn_cropped:test"  # task_info: 26,032 test images
    data.path = ""  # tfds data_dir
    data.num_classes = 10  # main.py (task svhn)
    data.image_size = 32  # main.py (task svhn)

    config.teacher = svhn_model(digits)  # run.sh --teacher_model_name=efficientnet-b0
    config.student = svhn_model(digits)

    train = config.train
    train.batch_size = 128  # run.sh --train_batch_size
    train.steps_per_epoch = 0  # an epoch = 69,257 / 128 labeled images
    train.teacher_epochs = EPOCHS
    train.student_epochs = EPOCHS
    train.optimizer = "rmsprop"  # main.py / utils.build_optimizer
    # TF1 tf.train.RMSPropOptimizer starts the mean square at ones (Keras: zeros)
    train.rmsprop_second_moment_init = 1.0
    train.learning_rate = 0.016  # main.py --base_learning_rate (per 256)
    train.schedule = "exponential"
    train.warmup_epochs = 5  # main.py: build_learning_rate(warmup_epochs=5)
    train.decay_rate = 0.97  # main.py: the decay factor behind --final_base_lr
    # run.sh --final_base_lr=0.0002: decay_epochs follows from it (main.py).
    train.final_learning_rate = 0.0002
    train.weight_decay = 1e-4  # run.sh --weight_decay
    train.label_smoothing = 0.1  # main.py --label_smoothing default
    train.ema_decay = 0.9999  # main.py --moving_average_decay default
    train.save_every_steps = 1000  # run.sh --save_checkpoints_steps

    pseudo = config.pseudo
    pseudo.soft = True  # run.sh --teacher_softmax_temp=1
    pseudo.temperature = 1.0
    pseudo.unlabeled_ratio = 5  # run.sh --unlabel_ratio
    pseudo.online = pseudo.via_records = False  # streamed: labels go through shards
    pseudo.topk = 0  # all 10 probabilities (official predict_label.py)
    pseudo.num_output_shards = 128  # filter_unlabel.sh --num_shards
    pseudo.balance = "official"  # filter_unlabel.py's rule
    if "offline" in variants:
        pseudo.threshold = 0.3  # filter_unlabel.sh --min_threshold
        pseudo.images_per_class = 53_113  # filter_unlabel.sh --num_image (extra / 10)
    else:  # run.sh: every extra image, as labeled
        pseudo.threshold = 0.0
        pseudo.images_per_class = 0

    if "smoke" in variants:
        _smoke(config)
    return config


def _smoke(config):
    """Toy sizes, same code path: a CPU-minute check of the wiring."""
    config.verbose = 0
    for block in (config.teacher, config.student):
        block.width_coefficient *= SMOKE_SCALE
        block.depth_coefficient *= SMOKE_SCALE
        block.batch_norm_momentum = 0.9  # a few steps (digits.py)
    train = config.train
    train.batch_size = 4
    train.steps_per_epoch = 2
    train.teacher_epochs = train.student_epochs = 2
    train.warmup_epochs = 0  # final_learning_rate needs epochs > warmup_epochs
    train.ema_decay = 0.9
    train.eval_batch_size = 16
    pseudo = config.pseudo
    pseudo.threshold = 0.0  # a 4-step teacher is not confident yet
    if pseudo.images_per_class:  # offline: balanced, at a toy size
        pseudo.images_per_class = 8
    pseudo.num_output_shards = 2
