"""Noisy Student on scikit-learn's bundled digits: the CPU default.

  python experiments/noisy_student.py                       # this config
  python experiments/noisy_student.py --config.seed=1       # another seed
  python experiments/noisy_student.py --config=experiments/configs/digits.py:smoke

50 labeled images (5 per class), 1,387 unlabeled, 360 test, 32x32 RGB.
A tiny small-image EfficientNet teacher, then two students of the same size
(equal-or-larger, as in the paper). Expected: each student beats its
teacher on test top-1; see docs/results.md for measured numbers and
runtime. The `smoke` variant runs the same code in well under a minute.
"""

import ml_collections


def model(dropout_rate=0.2, final_survival_prob=0.8, magnitude=9, flip=False, extra_cutout=True):
    """One model block: architecture, multipliers, its input preprocessing and noise."""
    return ml_collections.ConfigDict(
        dict(
            architecture="efficientnet-b0",
            width_coefficient=0.25,
            depth_coefficient=0.25,
            small_image=True,  # stride 1 in stages 2-3 for 32 px inputs (official)
            batch_norm_momentum=0.9,  # official 0.99 assumes ~100k steps; a few hundred here
            dropout_rate=dropout_rate,  # before the classifier
            final_survival_prob=final_survival_prob,  # stochastic depth, 1.0 -> this
            randaugment_layers=2,  # N (paper: 2)
            randaugment_magnitude=magnitude,  # M on the official 0-30 scale
            randaugment_variant="corrected",  # or "official" (the paper's uint8 wrap-around)
            cutout=True,  # Cutout among RandAugment's ops (official op list)
            # official (crop + flip + RandAugment + extra Cutout, data/preprocess.py)
            # | randaugment_only | none
            preprocess="official",
            flip=flip,  # horizontal flip: off for digits (as the official SVHN runs)
            extra_cutout=extra_cutout,  # official small-image Cutout of side size/2 after RandAugment
            # all-reduce batch-norm moments across replicas (official utils.py
            # TpuBatchNormalization, main.py --num_shards_per_group)
            sync_batch_norm=False,
            # batch-norm moments over groups of this many consecutive replicas
            # (models/layers.py GroupedBatchNormalization): 1 per replica; -1 the
            # official rule, groups of max(8, replicas // 8) beyond 8 replicas
            # (official utils.py TpuBatchNormalization, main.py --num_shards_per_group=-1)
            batch_norm_group_size=1,
            # input mean/std inside the model, a models/efficientnet.py NORMALIZATIONS
            # name (official task_info.py get_mean_std: each task its own)
            normalization="imagenet",
            # the model's input side: it trains, is evaluated, labels and is
            # exported at this size (official data_input.py fed the teacher its
            # own resolution); 0: data.image_size
            image_size=0,
            # warm start: a checkpoint of this architecture (.keras, official TF1,
            # keras.applications .h5) whose weights the model starts from instead
            # of a fresh initialization (official main.py --init_model_path); every
            # model of the block (each student) starts from it; "": none
            init_checkpoint="",
        )
    )


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.verbose = 1  # 1: ~15 progress lines per model; 0: silent; 2: Keras, a line per epoch
    config.deterministic = False  # True: bit-identical reruns (deterministic kernels; slower)
    config.strategy = "default"  # default | mirrored | multi_worker | tpu
    config.tpu_address = ""
    # auto: bfloat16 + XLA on TPU, float16 + loss scaling + XLA on GPU, float32
    # without XLA on CPU (training/precision.py; CPU figures in docs/results.md)
    config.precision = "auto"  # auto | float32 | mixed_bfloat16 | mixed_float16
    config.jit_compile = "auto"  # auto | True | False
    config.num_iterations = 2  # students after the teacher (paper: 3)
    config.allow_smaller_student = False
    # A .keras file or exported SavedModel to use as the first teacher instead
    # of training one (ablations from one teacher); "" trains it.
    config.teacher_checkpoint = ""

    config.data = data_block()

    config.teacher = model()
    # paper: dropout 0.5 for students. No extra Cutout for them: on these 8x8
    # digits upscaled to 32 px a 16 px square hides half the digit its pseudo
    # label describes. Measured from one seed-0 teacher (87.22%): student 1
    # 83.06% with it, 89.44% without (docs/results.md).
    config.student = model(dropout_rate=0.5, magnitude=9, extra_cutout=False)

    config.train = train_block()
    config.pseudo = pseudo_block()
    config.evaluate = evaluate_block()

    if arg == "smoke":
        _shrink_to_smoke(config)
    return config


def data_block():
    """The `data` block: which sets, how many labels, their size."""
    return ml_collections.ConfigDict(
        dict(
            source="digits",  # digits | tfrecord | tfds in memory; "stream": data.labeled
            path="",  # tfrecord: folder of train-*/test-*.tfrecord; tfds: its data_dir
            name="",  # tfds: dataset name, e.g. cifar10
            num_classes=10,
            num_labeled_per_class=5,  # few labels: where self-training pays off
            num_test_per_class=36,  # digits only
            image_size=32,
            split_seed=0,  # digits: the labeled/unlabeled/test split is fixed by this
            # Streamed sets (data/sources.py), each a folder or glob of shards in
            # the record schema or tfds:NAME:SPLIT (data_dir: path). Setting
            # `labeled` switches to the streamed protocol (source is then unused);
            # `unlabeled` may be another dataset (labels absent or -1).
            labeled="",
            unlabeled="",
            test="",
            # A tools/filter_balance.py output folder: the first student trains
            # on it and `labeled`, with no teacher stage.
            pseudo_labeled="",
        )
    )


def train_block():
    """The `train` block: optimizer, schedule, moving average, batch sizes."""
    return ml_collections.ConfigDict(
        dict(
            batch_size=25,  # labeled images per step (global)
            steps_per_epoch=0,  # 0: one pass over the labeled images
            teacher_epochs=400,  # 2 steps per epoch: 800 steps
            student_epochs=400,
            optimizer="adam",  # rmsprop (official) | sgd | adam
            # rmsprop only: where the mean square of the gradients starts; 0.0
            # Keras's RMSprop, 1.0 TF1 tf.train.RMSPropOptimizer (the official
            # optimizer; training/optimization.py TF1RMSprop)
            rmsprop_second_moment_init=0.0,
            learning_rate=0.01,  # per 256 labeled images; scaled with batch_size
            schedule="cosine",  # exponential (official) | cosine | constant
            warmup_epochs=3,
            # Moving average of weights and batch-norm statistics, decay
            # min(ema_decay, (1 + t) / (10 + t)) at step t (official main.py).
            ema_decay=0.99,  # official 0.9999 over ~100k steps; short runs need less
            decay_rate=0.97,  # exponential schedule: x0.97 ... (official)
            decay_epochs=2.4,  # ... every 2.4 epochs (official; 2.4 x train_ratio)
            final_learning_rate=0.0,  # >0: derive decay_epochs from it (official final_base_lr)
            weight_decay=1e-5,  # official
            label_smoothing=0.1,  # official
            eval_batch_size=256,
            # Checkpoint of a fit every N steps, restored when the run is rerun
            # with the same --workdir (training/resume.py); 0: none.
            save_every_steps=200,
        )
    )


def pseudo_block():
    """The `pseudo` block: how the teacher's labels are made, filtered and balanced."""
    return ml_collections.ConfigDict(
        dict(
            soft=True,  # soft (probabilities) or hard (argmax) pseudo labels
            temperature=1.0,
            threshold=0.3,  # paper: drop images with confidence < 0.3
            images_per_class=130,
            # exact: the top-K per class, duplicated exactly; official: the
            # official filter_unlabel.py rule (raised per-class threshold, coin flips)
            balance="exact",  # balance every class to this many (paper: 130K)
            unlabeled_ratio=4,  # unlabeled batch = ratio x labeled batch (paper: 14, 28)
            # one ratio per student overriding unlabeled_ratio (paper L2: 14, 14, 28); (): none
            unlabeled_ratio_per_iteration=(),
            online=False,  # True: teacher runs inside the train step
            via_records=False,  # True: label/filter/balance through TFRecords + Beam (tools/)
            # Record path (via_records, streamed data): the k most probable
            # classes stored per record (0: all; tools/label.py --topk) and the
            # balanced shards written (tools/filter_balance.py --num_output_shards).
            topk=0,
            num_output_shards=4,
        )
    )


def evaluate_block():
    """The `evaluate` block: the optional robustness report of every model."""
    # Every model of the run side by side: accuracy, calibration, the 15
    # ImageNet-C corruptions, flip rates, FGSM/PGD (docs/evaluation.md), in
    # WORKDIR/robustness/report.json; mCE/mFR relative to the teacher.
    return ml_collections.ConfigDict(
        dict(
            robustness=False,
            sample=200,  # seeded test images; 0 = all (200: a few minutes on CPU)
            corruptions=(),  # () = all 15
            severities=(1, 2, 3, 4, 5),
            eps=(1, 2, 4, 8, 16),  # 0-255 pixels (paper, Figure 7)
            pgd_steps=10,  # paper, section 3.3
        )
    )


def _shrink_to_smoke(config) -> None:
    """`:smoke`: the same code path in well under a minute."""
    config.evaluate.sample = 16
    config.evaluate.corruptions = ("gaussian_noise", "fog")
    config.evaluate.eps = (2,)
    config.evaluate.pgd_steps = 2
    config.num_iterations = 1
    config.train.teacher_epochs = 2
    config.train.student_epochs = 2
    config.train.steps_per_epoch = 2
    config.pseudo.images_per_class = 20
    config.pseudo.threshold = 0.0  # a 4-step teacher is not confident yet
    config.verbose = 0
