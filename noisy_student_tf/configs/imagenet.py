"""Noisy Student on ImageNet: the paper's EfficientNet-B0 ... B7 and L2 runs.

  python experiments/noisy_student.py --config=experiments/configs/imagenet.py:b7 \
      --config.data.unlabeled=/data/jft_like --config.data.path=/data/tfds \
      --config.tpu_address=my-tpu --workdir=gs://bucket/runs/b7
  python experiments/noisy_student.py --config=experiments/configs/imagenet.py:l2 ...
  python experiments/noisy_student.py --config=experiments/configs/imagenet.py:b0,smoke \
      --config.data.labeled=DIR --config.data.unlabeled=DIR --config.data.test=DIR

Variants (comma-separated, in any order): one model `b0` (default) ... `b7`
or `l2`, optionally with `smoke`.

- `b0` ... `b7`: the official per-size runs (google-research/noisystudent
  local_scripts/imagenet/train.sh): teacher and student of the same
  architecture, one student, that script's unlabeled ratio, epochs and
  RandAugment magnitude. Paper: Noisy Student improves every size,
  e.g. B7 86.9% top-1 (official checkpoints, tensorflow/tpu
  models/official/efficientnet/README.md).
- `l2`: the paper's best run (section 3.1, "Iterative training"): a B7
  teacher at its own 600 px, then three EfficientNet-L2 students with
  unlabeled batches 14x, 14x and 28x the labeled batch, trained at 475 px,
  then fine-tuned at 800 px (88.4% top-1). Six days on a 2048-core TPU v3 pod per student at
  14x (paper).
- `smoke`: the same code path at toy sizes (every width and depth x1/8, so
  the student stays at least the teacher's size; 32 px, l2's teacher 40 px;
  4 classes; a few steps; default strategy, float32). It needs small record folders in
  data.labeled/unlabeled/test, such as tests/test_configs.py writes.

Data (the streamed protocol): labeled ImageNet train, evaluated on the
50,000 validation images, through tfds (data.path = its data_dir); the
unlabeled pool is a folder of source shards in the record schema
(docs/data_format.md) that you provide: the paper used 300M JFT images.

Sources cited below: "paper" = Xie et al., arXiv 1911.04252, section 3.1
unless a section is named; "train.sh" = noisystudent
local_scripts/imagenet/train.sh; "main.py" = noisystudent main.py flag
defaults; "filter_unlabel.sh" = noisystudent
local_scripts/imagenet/filter_unlabel.sh; "builder" =
efficientnet_builder.efficientnet_params (our models.VARIANTS).

Where our loop differs from the official code:
- the L2 students after the first are taught by an L2 student, which labels
  at the 475 px it trained at (its .keras input); the official code does not
  fix that resolution: main.py --mode=predict labels at --input_image_size,
  else the builder's 800 px for L2, and the L2 labeling commands are not
  published.
- one `train` block for teacher and student: a B0-B4 teacher gets the
  student's 700-epoch schedule (the official EfficientNet baselines,
  tensorflow/tpu efficientnet main.py, trained 350 epochs).
- our own models (trained by the loop) read the eval view resized with TF2
  bicubic rounded to uint8, not TF1 resize_bicubic in float
  (preprocessing.py): the view they were trained against (their training
  crops are TF2-resized too), so this difference is intended.
Matching the official code (no longer differences): the eval view (center
crop of S/(S+32) of the shorter side + bicubic) is what a teacher labels
(predict_label.py preprocess_image(is_training=False)) in both labeling
engines, as well as what test accuracy, tools/evaluate.py and the exported
SavedModel use; an official checkpoint (teacher_checkpoint, --teacher,
--model) reads it with the official resize (TF1 resize_bicubic, float32,
`eval_preprocess(resize="official")`) in each of them; every model at its own
resolution (teacher.image_size, student.image_size: the B7 teacher trains,
labels and is evaluated at 600 px, as data_input.py fed a teacher its own
efficientnet_params size), a student may start from a checkpoint
(student.init_checkpoint, main.py --init_model_path), RMSProp's mean square
starts at ones (train.rmsprop_second_moment_init), batch-norm moments over
groups of replicas by the official rule (batch_norm_group_size=-1),
fine-tuning runs its frozen blocks in inference mode, training crops come
from the whole decoded image (area 0.08-1, one resize; tensorflow/tpu
preprocessing.py `_decode_and_random_crop`), and each host reads its own
share of the input with its own augmentation keys.
"""

import ml_collections

from noisy_student_tf.configs import digits
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.models.efficientnet import BLOCKS, VARIANTS, round_repeats

MODELS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "l2")

# model -> (RandAugment magnitude M, unlabeled ratio, train_ratio), from
# train.sh's "Additional config for EfficientNet-BX" blocks. B0 and B1 have
# no --augment_name there: crop and flip only, no RandAugment (M = 0 here).
# train_ratio 2 doubles the 350-epoch schedule (main.py --train_ratio); the
# paper: "700 epochs for smaller models" (up to B4), 350 for B5 and larger.
PER_MODEL = {
    "b0": (0, 1, 2),
    "b1": (0, 3, 2),
    "b2": (6, 3, 2),
    "b3": (12, 3, 2),
    "b4": (15, 3, 2),
    "b5": (18, 3, 1),
    "b6": (24, 3, 1),
    "b7": (27, 3, 1),
    # paper: the noise is "the same for EfficientNet-B7, L0, L1 and L2", M=27;
    # 350 epochs; ratio 14 for the first student (per-iteration ratios below).
    "l2": (27, 14, 1),
}
# main.py: --train_steps=109474 at its --train_batch_size=4096, "350 epochs on
# ImageNet", times --train_ratio.
EPOCHS = 350
# paper, appendix table of architectures: L2 trains at 475 px (tensorflow/tpu
# efficientnet README: the "L2-475" checkpoint) and tests at 800 px (builder).
L2_TRAIN_SIZE = 475
L2_TEST_SIZE = 800
# The L2 run's B7 teacher: builder efficientnet-b7 (2.0, 3.1, 600, 0.5); the
# official pipeline trained and fed a teacher at that size (main.py
# input_image_size default, data_input.py teacher_image_size).
B7_SIZE = VARIANTS["efficientnet-b7"][2]
# smoke: the same two sizes shrunk (600:475 ~ 40:32), so the teacher and the
# student still differ
SMOKE_TEACHER_SIZE, SMOKE_SIZE = 40, 32
# paper, "Iterative training": 14:1, 14:1, then 28:1 for the three L2 students.
L2_UNLABELED_RATIOS = (14, 14, 28)
SMOKE_SCALE = 0.125  # smoke: every width and depth coefficient x1/8


def parse_arg(arg):
    """`"b7,smoke"` -> ("b7", True); the model defaults to b0."""
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    unknown = [t for t in tokens if t not in (*MODELS, "smoke")]
    models = [t for t in tokens if t in MODELS]
    if unknown or len(models) > 1:
        raise ConfigError(
            f"imagenet.py:{arg}: expected one of {', '.join(MODELS)} (default b0), "
            f"optionally with ',smoke'; got {', '.join(unknown or models)}"
        )
    return (models[0] if models else "b0"), "smoke" in tokens


def frozen_blocks(depth_coefficient, num_stages=4):
    """MBConv blocks in the first `num_stages` stages of a model of this depth."""
    return sum(round_repeats(s.repeats, depth_coefficient) for s in BLOCKS[:num_stages])


def imagenet_model(digits, name):
    """One model block with the official ImageNet noise for `name` (b0 ... l2)."""
    architecture = f"efficientnet-{name}"
    width, depth, _, dropout = VARIANTS[architecture]
    magnitude = PER_MODEL[name][0]
    # builder: dropout B0 0.2 ... B6-L2 0.5 (paper: 0.5 for B7 and L0-L2);
    # stochastic depth: builder's stochastic_depth_rate=0.2 (paper: survival 0.8).
    block = digits.model(dropout_rate=dropout, final_survival_prob=0.8, magnitude=magnitude)
    block.architecture = architecture
    block.width_coefficient = width  # builder
    block.depth_coefficient = depth  # builder
    block.small_image = False  # 224 px and up: the standard EfficientNet
    block.batch_norm_momentum = 0.99  # builder (official GlobalParams)
    # utils.TpuBatchNormalization with main.py --num_shards_per_group=-1: moments
    # over groups of max(8, replicas // 8) replicas beyond 8 (per replica up to 8).
    block.batch_norm_group_size = -1
    block.randaugment_layers = 2  # main.py --randaug_layer=2 (paper: N=2)
    block.randaugment_variant = "official"  # the op levels the paper's runs used
    block.cutout = True  # main.py --cutout_op=True: Cutout among RandAugment's ops
    block.flip = True  # official preprocessing: Inception crop -> flip -> RandAugment
    block.extra_cutout = False  # official: the extra Cutout is small-image only
    return block


def get_config(arg=None):
    name, smoke = parse_arg(arg)
    config = digits.get_config()
    _, ratio, train_ratio = PER_MODEL[name]

    config.strategy = "tpu"  # main.py --use_tpu=True
    config.precision = "auto"  # bfloat16 on TPU (main.py --use_bfloat16=True)

    data = config.data
    data.source = "stream"
    data.labeled = "tfds:imagenet2012:train"  # 1,281,167 images (main.py num_train_images)
    data.test = "tfds:imagenet2012:validation"  # the paper's 50,000-image test set
    data.unlabeled = ""  # a folder of source shards (paper: 300M JFT images); set it
    data.path = ""  # tfds data_dir, where imagenet2012 is prepared
    data.num_classes = 1000
    data.image_size = L2_TRAIN_SIZE if name == "l2" else VARIANTS[f"efficientnet-{name}"][2]

    # Teacher of iteration 0: the same architecture (train.sh:
    # --teacher_model_name=${model_name}); for L2, B7 (paper, "Iterative
    # training"). The paper trains the teacher noised as well (Algorithm 1).
    config.teacher = imagenet_model(digits, "b7" if name == "l2" else name)
    config.student = imagenet_model(digits, name)
    if name == "l2":  # b0-b7: both at data.image_size, the variant's own
        config.teacher.image_size = B7_SIZE
        # Every L2 student trains at 475 (paper) and, as a teacher, labels at it
        # (the official code does not fix that size; see "differs" above).
        config.student.image_size = L2_TRAIN_SIZE
    # train.sh: one training run per size; paper: three L2 iterations.
    config.num_iterations = len(L2_UNLABELED_RATIOS) if name == "l2" else 1

    train = config.train
    # paper: labeled batch 2048 by default, "reduce the batch size when we could
    # not fit the model into the memory"; 512, 1024 and 2048 "lead to the same
    # performance". (main.py's default is 4096; the per-256 rate is the same.)
    # The L2 runs' labeled batch is not published: 2048 here.
    train.batch_size = 2048
    train.steps_per_epoch = 0  # an epoch = 1,281,167 / batch labeled images
    train.teacher_epochs = EPOCHS * train_ratio
    train.student_epochs = EPOCHS * train_ratio
    # main.py / utils.build_optimizer: RMSProp, decay 0.9, momentum 0.9, epsilon 1e-3
    train.optimizer = "rmsprop"
    # TF1 tf.train.RMSPropOptimizer starts the mean square at ones (Keras: zeros)
    train.rmsprop_second_moment_init = 1.0
    # paper: 0.128 at batch 2048; main.py --base_learning_rate=0.016 per 256.
    train.learning_rate = 0.128 * 256 / 2048
    train.schedule = "exponential"
    train.warmup_epochs = 5  # main.py: build_learning_rate(warmup_epochs=5)
    train.decay_rate = 0.97  # paper; utils.build_learning_rate decay_factor
    # paper: every 2.4 epochs for 350 epochs, 4.8 for 700 (main.py: 2.4 x train_ratio)
    train.decay_epochs = 2.4 * train_ratio
    train.final_learning_rate = 0.0  # ImageNet runs fix decay_epochs, not --final_base_lr
    train.weight_decay = 1e-5  # main.py --weight_decay
    train.label_smoothing = 0.1  # main.py --label_smoothing
    train.ema_decay = 0.9999  # main.py --moving_average_decay
    train.eval_batch_size = 64 if name == "l2" else 256  # memory only; no effect on results
    train.save_every_steps = 1000  # main.py --save_checkpoints_steps

    pseudo = config.pseudo
    pseudo.soft = True  # train.sh --teacher_softmax_temp=1: soft labels (paper: soft)
    pseudo.temperature = 1.0  # train.sh --teacher_softmax_temp=1
    pseudo.threshold = 0.3  # paper; filter_unlabel.sh --min_threshold=0.3
    pseudo.images_per_class = 130_000  # paper: 130K per class; filter_unlabel.sh --num_image
    pseudo.balance = "official"  # filter_unlabel.py's rule, as the paper's data was made
    pseudo.unlabeled_ratio = ratio  # train.sh --unlabel_ratio; L2: 14 (paper)
    # Per-student override of unlabeled_ratio: entry i-1 for student i; () = the
    # same ratio for every student. L2: 14, 14, 28 (paper, "Iterative training").
    pseudo.unlabeled_ratio_per_iteration = L2_UNLABELED_RATIOS if name == "l2" else ()
    # Streamed data: every student's labels go through shards, as the official
    # JFT pipeline did (predict.sh -> filter_unlabel.sh -> train_offline.sh).
    pseudo.online = pseudo.via_records = False  # (both are in-memory modes)
    pseudo.topk = 0  # store all 1000 probabilities (official predict_label.py)
    pseudo.num_output_shards = 128  # filter_unlabel.sh / predict.sh --num_shards=128

    config.fine_tune = fine_tune_config(name, config.student.depth_coefficient)

    if smoke:
        _smoke(config, name)
    return config


def fine_tune_config(name, student_depth):
    """The final stage at test resolution (paper section 3.1; FixRes, Touvron et al. 2019).

    Paper: after 350 epochs at 475 px, L0-L2 are "finetuned with a larger
    resolution for 1.5 epochs on unaugmented labeled images", with "the
    shallow layers" fixed. Official main.py implements it with
    --init_model_path (start from the trained student), --remove_aug (train
    images get the eval center crop), --fix_layer_num=K (the stem and the
    first K MBConv blocks frozen, their batch norm in inference mode:
    efficientnet_model.py) and --train_last_step_num (the learning rate
    continues as the last steps of the main schedule). The official K for
    L2 is not published: the blocks of stages 1-4 (44 of L2's 88, half) are
    our guess.
    """
    enabled = name == "l2"
    return ml_collections.ConfigDict(
        dict(
            enabled=enabled,
            image_size=L2_TEST_SIZE if enabled else 0,
            epochs=1.5,  # paper
            preprocess="none",  # paper: unaugmented (official --remove_aug: center crop)
            frozen_blocks=frozen_blocks(student_depth),  # guess (see docstring)
            unlabeled_ratio=0,  # paper: labeled images only
            continue_schedule=True,  # official --train_last_step_num
        )
    )


def _smoke(config, name):
    """Toy sizes, same code path: a CPU-minute check of a variant's wiring."""
    config.strategy = "default"
    config.precision = "float32"
    config.verbose = 0
    config.data.num_classes = 4
    config.data.image_size = SMOKE_SIZE
    if name == "l2":
        config.teacher.image_size = SMOKE_TEACHER_SIZE
        config.student.image_size = SMOKE_SIZE
    for block in (config.teacher, config.student):
        # Scaling both coefficients keeps the student at least the teacher's size.
        block.width_coefficient = round(block.width_coefficient * SMOKE_SCALE, 4)
        block.depth_coefficient = round(block.depth_coefficient * SMOKE_SCALE, 4)
        block.batch_norm_momentum = 0.9  # a few steps (digits.py)
    train = config.train
    train.batch_size = 4
    train.steps_per_epoch = 2
    train.teacher_epochs = train.student_epochs = 2
    train.warmup_epochs = 0
    train.ema_decay = 0.9
    train.eval_batch_size = 16
    pseudo = config.pseudo
    pseudo.threshold = 0.0  # a 4-step teacher is not confident yet
    pseudo.images_per_class = 8
    pseudo.num_output_shards = 2
    pseudo.unlabeled_ratio = 1
    if name == "l2":
        pseudo.unlabeled_ratio_per_iteration = (1, 1, 2)  # 14:14:28, shrunk
    config.fine_tune.frozen_blocks = frozen_blocks(config.student.depth_coefficient)
    if config.fine_tune.enabled:
        config.fine_tune.image_size = 48
