"""Large-image training crops come from the whole encoded image (issue 21, item 1).

The official parser (tensorflow/tpu efficientnet preprocessing.py
`_decode_and_random_crop`) crops area [0.08, 1] and aspect [3/4, 4/3] of the
full decoded image and resizes once. These tests send synthetic 500x375 and
375x500 JPEGs and PNGs with a coloured border through the loop's record
streams into the training batches, and read every crop's box back from the
pixels: red encodes the column, green the row of the full image, blue the
image's id inside and 255 on the border.
"""

import json
import os

import numpy as np
import tensorflow as tf
from conftest import write_records

from noisy_student_tf.data import pipeline, preprocess, schema
from noisy_student_tf.data.sources import RecordSource
from noisy_student_tf.loop import record_stages

SIZE = 64  # model side; the large-image path (small_image=False) throughout
BORDER = 20  # px; outside the eval view (a center square of 64/96 of the short side)
# id -> (width, height, format): landscape and portrait, JPEG and PNG.
IMAGES = {0: (500, 375, "jpeg"), 1: (375, 500, "jpeg"), 2: (500, 375, "png"), 3: (375, 500, "png")}
BATCH, RATIO, STEPS = 8, 2, 15


def _image(image_id):
    width, height, _ = IMAGES[image_id]
    y, x = np.mgrid[:height, :width]
    red = np.round(255 * x / (width - 1))
    green = np.round(255 * y / (height - 1))
    inside = (y >= BORDER) & (y < height - BORDER) & (x >= BORDER) & (x < width - BORDER)
    blue = np.where(inside, 40 * image_id, 255)
    return np.stack([red, green, blue], -1).astype(np.uint8)


def _encoded(image_id):
    image = tf.constant(_image(image_id))
    if IMAGES[image_id][2] == "jpeg":
        return tf.io.encode_jpeg(image, quality=95).numpy()
    return tf.io.encode_png(image).numpy()


def _write(folder):
    """The four images as labeled shards and as a filter_balance output folder."""
    examples = [
        schema.source_example(_encoded(i), i, f"{i}".encode(), IMAGES[i][2].encode())
        for i in IMAGES
    ]
    labeled = write_records(folder / "labeled", examples, 2, prefix="train")
    probs = np.eye(len(IMAGES), dtype=np.float32)
    pseudo = [schema.add_teacher_view(e, probs[i]) for i, e in enumerate(examples)]
    files = write_records(folder / "pseudo", pseudo, 2, prefix="pseudo")
    manifest = {
        "num_classes": len(IMAGES),
        "out_records": len(pseudo),
        "shards": [os.path.basename(f) for f in files],
    }
    (folder / "pseudo" / "manifest.json").write_text(json.dumps(manifest))
    return labeled, str(folder / "pseudo")


def _training_batches(labeled_files, pseudo_folder, start_batch=0, steps=STEPS):
    """Batches of the loop's two record streams, cropped but not flipped or augmented
    (so the pixels still say where each crop came from)."""
    source = RecordSource("labeled", tuple(labeled_files), num_records=len(IMAGES))
    labeled = source.training_stream(SIZE, seed=1, small_image=False, cache=True)
    unlabeled, count = record_stages.balanced_stream(
        pseudo_folder, len(IMAGES), SIZE, seed=1, small_image=False
    )
    assert count == len(IMAGES)
    crop_only = preprocess.TrainPreprocess(SIZE, None, small_image=False, flip=False, cutout=False)
    ds = pipeline.training_dataset(
        labeled, BATCH, unlabeled, RATIO, crop_only, seed=1, start_batch=start_batch
    )
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(steps)]


def _box(crop, image_id):
    """(area fraction of the full image, aspect width / height) of one crop.

    The first and last output pixels' centers sit half an output pixel
    inside the crop: their distance is (1 - 1/SIZE) of its side.
    """
    width, height, _ = IMAGES[image_id]
    columns = crop[..., 0].astype(float).mean(0) / 255 * (width - 1)
    rows = crop[..., 1].astype(float).mean(1) / 255 * (height - 1)
    w = abs(columns[-1] - columns[0]) / (1 - 1 / SIZE)
    h = abs(rows[-1] - rows[0]) / (1 - 1 / SIZE)
    return w * h / (width * height), w / h


def _image_id(crop):
    """The id written in blue inside the border (JPEG moves it by a few levels)."""
    blue = crop[..., 2].astype(int)
    return int(np.round(np.median(blue[blue < 200]) / 40))


def test_training_crops_cover_the_whole_image_with_the_official_ranges(tmp_path):
    labeled_files, pseudo_folder = _write(tmp_path)
    batches = _training_batches(labeled_files, pseudo_folder)
    crops, ids = [], []
    for batch in batches:
        crops += list(batch["images"]) + list(batch["unlabeled_images"])
        ids += list(batch["labels"]) + list(batch["unlabeled_targets"].argmax(1))
    assert len(crops) == STEPS * BATCH * (1 + RATIO)
    # Labels and targets stay with their images.
    assert [_image_id(c) for c in crops if (c[..., 2] < 200).any()] == [
        i for c, i in zip(crops, ids) if (c[..., 2] < 200).any()
    ]
    assert set(ids) == set(IMAGES)
    # The border, outside the eval view, is in the training crops.
    bordered = [c for c in crops if ((c[..., 2] > 230) & (c[..., 0] > 0)).mean() > 0.02]
    assert len(bordered) > len(crops) // 10
    areas, aspects = np.array([_box(c, i) for c, i in zip(crops, ids)]).T
    # Official ranges, measured against the full image (a few pixels of error).
    assert 0.08 * 0.9 <= areas.min() < 0.15 and 0.8 < areas.max() <= 1.03
    assert 0.75 * 0.95 <= aspects.min() < 0.82 and 1.22 < aspects.max() <= 4 / 3 * 1.05


def _official_eval_view(image):
    """The official eval view, computed here: a centered square of S / (S + 32) of
    the shorter side, bicubic-resized to S and rounded to uint8."""
    height, width = image.shape[:2]
    side = int(SIZE / (SIZE + 32) * min(height, width))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    crop = tf.constant(image[top : top + side, left : left + side], tf.float32)
    resized = tf.image.resize(crop, [SIZE, SIZE], "bicubic")
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


def test_eval_view_and_labels_of_the_same_records_are_unchanged(tmp_path):
    labeled_files, pseudo_folder = _write(tmp_path)
    source = RecordSource("labeled", tuple(labeled_files), num_records=len(IMAGES))
    images, labels = (t.numpy() for t in next(iter(source.eval_batches(SIZE, 8, False))))
    unlabeled, _ = record_stages.balanced_stream(
        pseudo_folder, len(IMAGES), SIZE, seed=1, small_image=False
    )
    pseudo = [(x, y.argmax()) for x, y in unlabeled.eval_view().as_numpy_iterator()]
    assert sorted(labels.tolist()) == sorted(y for _, y in pseudo) == sorted(IMAGES)
    for view, label in [*zip(images, labels), *pseudo]:
        decoded = tf.io.decode_image(_encoded(int(label)), channels=3).numpy()
        np.testing.assert_array_equal(view, _official_eval_view(decoded))
        assert not (view[..., 2] > 230).any()  # no border in the eval view


def test_jpeg_decode_and_crop_takes_the_same_window_as_the_png_path():
    """The JPEG path decodes only the window; the PNG path decodes all, then crops."""
    jpeg, png = _encoded(0), _encoded(2)  # the same 500x375 picture, ids aside
    for index in range(6):
        key = tf.constant([7, index], tf.int64)
        a = preprocess.decode_and_random_crop(jpeg, SIZE, key).numpy().astype(int)
        b = preprocess.decode_and_random_crop(png, SIZE, key).numpy().astype(int)
        assert np.abs(a[..., :2] - b[..., :2]).mean() < 3  # same window, JPEG noise aside


def test_record_crops_are_keyed_by_batch_and_slot(tmp_path):
    """Same seed, same batches; a resumed stream's batch k draws batch k's crops.

    The labeled stream is cached (read in file order) and holds 4 records,
    so the fresh stream's batch 3 and the stream resumed at 3 crop the same
    records in the same slots: equal only if the keys are (batch, slot)."""
    labeled_files, pseudo_folder = _write(tmp_path)
    fresh = _training_batches(labeled_files, pseudo_folder, steps=4)
    again = _training_batches(labeled_files, pseudo_folder, steps=4)
    for a, b in zip(fresh, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    source = RecordSource("labeled", tuple(labeled_files), num_records=len(IMAGES))
    stream = source.training_stream(SIZE, seed=1, small_image=False, cache=True)
    crop_only = preprocess.TrainPreprocess(SIZE, None, small_image=False, flip=False, cutout=False)

    def first(start):
        ds = pipeline.training_dataset(
            stream, 4, preprocess=crop_only, seed=1, shuffle_buffer=0, start_batch=start
        )
        return [b["images"].numpy() for b in ds.take(4 - start)]

    batches = first(0)
    np.testing.assert_array_equal(batches[3], first(3)[0])
    assert not np.array_equal(batches[0], batches[1])  # other batch, other crops
