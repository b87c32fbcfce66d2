"""The paper's filter-and-balance rule as an Apache Beam pipeline (JFT scale).

Same rules as select.filter_and_balance, record for record (tests check
that): drop records whose teacher confidence is below `threshold`, then
balance each class to K records.

`balance="exact"`: a class with n > K candidates keeps its K most confident
(ties broken by image key); a class with 0 < n <= K candidates gives each
floor(K / n) copies and a choice of K mod n of them, drawn from
`select.class_rng(seed, class)` over the candidates in (confidence desc, key
asc) order, one more. Scale: no worker holds a class's records. `Top.PerKey`
keeps, per class, a bounded heap of K (confidence, key) pairs (no image
bytes). Over-full classes reduce to one cutoff pair each (a tiny side
input); under-full classes, whose candidate lists are shorter than K by
definition, are turned into per-key copy counts and joined back to their
records with CoGroupByKey.

`balance="official"` (official filter_unlabel.py; see select.py): each
class's candidates are counted per 0.01 confidence level (at most 101
counters per class), which gives the class threshold and the number P of
images passing it (a side input of one pair per class); then every record
decides alone, by its `select.coin(seed, key)`, how many of its
int(K / P) or int(K / P) + 1 copies to write. No grouping of records at all.

Determinism: every copy goes to output shard hash(seed, key, copy) mod S and
a shard is sorted by that hash before it is written, so the output bytes do
not depend on the runner's ordering or parallelism, and the order looks
shuffled to a reader. All counts (records in, dropped and why, per class)
are data in the pipeline, not metrics, so they are exact under retries.

Memory: no step but the shard writer holds a record's bytes. The read step
pairs each record with a reference (record_refs.py: input file index and
byte offset, one int); classify, route, coins, join and expand carry only
that reference and the scalars they decide on (class, confidence, key),
and a copy bound for an output shard is 16 bytes (its hash, its reference).
The writer of a shard reads its records back by seek, in file and offset
order, and writes them in hash order. So a runner that keeps whole
PCollections in memory (the DirectRunner) holds tens of bytes per record,
not the images: benchmarks/scale.py measured the DirectRunner's peak at
1.8 GB for 100k records before, 0.82 GB for 100k and 1.05 GB for 1M after
(the rest of the growth includes the exact rule's top-K, K per class).
"""

from __future__ import annotations

import hashlib
import json
import os

import apache_beam as beam
import numpy as np
import tensorflow as tf
from absl import logging
from apache_beam.transforms.window import GlobalWindows

from noisy_student_tf import kill_points
from noisy_student_tf.data import records, schema
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.labeling import beam_runner, record_refs, report
from noisy_student_tf.labeling.select import (
    balanced_quota,
    class_rng,
    level_index,
    official_copies,
    official_plan,
    threshold_levels,
    validate_balance,
    validate_threshold,
)
from noisy_student_tf.labeling.shards import MANIFEST_SUFFIX

HIST_BINS = 20  # confidence histogram bins over [0, 1]
HASH_BYTES = 8  # output order hash: 2**64 values, collisions negligible at any pool size
REF_BYTES = 8  # a record_refs reference (file index << 40 | offset) as unsigned big endian


class _Classify(beam.DoFn):
    """Validates records and drops those below the threshold.

    Input: (reference, serialized) from `_read_indexed`.
    Main output: (class, (-confidence, key, reference)) for candidates.
    Tagged 'stats': (name, count) pairs, summed per bundle.
    """

    def __init__(self, num_classes: int, threshold: float, check_images: bool):
        self._num_classes = num_classes
        self._threshold = np.float32(threshold)
        self._check_images = check_images

    def start_bundle(self):
        self._stats = {}

    def _count(self, name, n=1):
        self._stats[name] = self._stats.get(name, 0) + n

    def process(self, element):
        ref, serialized = element
        self._count("in")
        fields, reason = schema.check_pseudo(serialized, self._num_classes)
        if fields is None:
            self._count(f"invalid/{reason}")
            return
        if self._check_images and not _decodes(serialized):
            self._count("invalid/undecodable_image")
            return
        label, confidence = fields["label"], np.float32(fields["confidence"])
        self._count(f"total/{label}")
        self._count(f"hist/{min(int(confidence * HIST_BINS), HIST_BINS - 1)}")
        if confidence < self._threshold:  # compared in float32, as select.py does
            self._count("below_threshold")
            return
        self._count(f"candidates/{label}")
        yield label, (-float(confidence), fields["key"], ref)

    def finish_bundle(self):
        for item in self._stats.items():
            yield beam.pvalue.TaggedOutput("stats", GlobalWindows.windowed_value(item))


def _decodes(serialized: bytes) -> bool:
    feature = tf.train.Example.FromString(serialized).features.feature
    try:
        tf.io.decode_image(
            feature[schema.IMAGE].bytes_list.value[0], channels=3, expand_animations=False
        )
    except (tf.errors.InvalidArgumentError, ValueError):
        return False
    return True


def _plan(class_and_top, counts: dict, images_per_class: int, seed: int):
    """One class's top-K list -> ('cutoff', class, pair) or ('copies', (class, key), n)."""
    label, top = class_and_top
    top = sorted(top)  # (-confidence, key): most confident first
    n = counts[label]
    if n > images_per_class:
        yield "cutoff", label, top[-1]
        return
    copies = balanced_quota(n, images_per_class, class_rng(seed, label))
    for (_, key), c in zip(top, copies):
        yield "copies", (label, key), int(c)


class _Route(beam.DoFn):
    """Over-full classes: keep a record iff it is within its class's cutoff.
    Under-full classes go to the join (tag 'under'). No balancing: keep all."""

    def __init__(self, images_per_class: int):
        self._k = images_per_class

    def start_bundle(self):
        self._over = 0

    def process(self, element, counts, cutoffs):
        label, (neg_conf, key, ref) = element
        if not self._k:
            yield label, key, 1, ref
        elif counts[label] > self._k:
            if (neg_conf, key) <= cutoffs[label]:
                yield label, key, 1, ref
            else:
                self._over += 1
        else:
            yield beam.pvalue.TaggedOutput("under", ((label, key), ref))

    def finish_bundle(self):
        if self._over:
            yield beam.pvalue.TaggedOutput(
                "stats", GlobalWindows.windowed_value(("over_quota", self._over))
            )


def _official_plan(class_and_counts, levels: np.ndarray, images_per_class: int):
    """(class, [(level, count), ...]) -> (class, (class threshold, images passing it))."""
    label, level_counts = class_and_counts
    counts = np.zeros(len(levels), np.int64)
    for level, n in level_counts:
        counts[level] += n
    j, passing = official_plan(counts, images_per_class)
    return label, (float(levels[j]), passing)


class _Coins(beam.DoFn):
    """Official rule: a candidate at or above its class threshold gets
    int(K / P) copies, or one more if its coin says so; others are dropped."""

    def __init__(self, images_per_class: int, seed: int):
        self._k, self._seed = images_per_class, seed

    def start_bundle(self):
        self._over = 0

    def process(self, element, plans):
        label, (neg_conf, key, ref) = element
        level, passing = plans[label]
        if np.float32(-neg_conf) >= np.float32(level):
            copies = official_copies(self._k, passing, self._seed, key)
            if copies:
                yield label, key, copies, ref
                return
        self._over += 1

    def finish_bundle(self):
        if self._over:
            yield beam.pvalue.TaggedOutput(
                "stats", GlobalWindows.windowed_value(("over_quota", self._over))
            )


def _join_copies(element):
    (label, key), grouped = element
    copies = grouped["copies"]
    for ref in grouped["records"]:
        yield label, key, copies[0], ref


def _shard_hash(seed: int, key: bytes, copy: int) -> bytes:
    return hashlib.blake2b(b"%d\0%s\0%d" % (seed, key, copy), digest_size=HASH_BYTES).digest()


def _read_indexed(indexed_path):
    """(file index, path) -> (reference, serialized) for each record of the file."""
    file_index, path = indexed_path
    for offset, serialized in record_refs.read_with_offsets(path):
        yield record_refs.make_ref(file_index, offset), serialized


class _Expand(beam.DoFn):
    """(class, key, copies, reference) -> (shard, hash + reference) for each copy.

    The value is 16 bytes, hash first (big endian), so sorting the values
    sorts a shard by hash as the writer needs.
    """

    def __init__(self, seed: int, num_shards: int):
        self._seed, self._num_shards = seed, num_shards

    def start_bundle(self):
        self._out, self._kept = {}, {}

    def process(self, element):
        label, key, copies, ref = element
        packed_ref = ref.to_bytes(REF_BYTES, "big")
        self._out[label] = self._out.get(label, 0) + copies
        self._kept[label] = self._kept.get(label, 0) + 1
        for j in range(copies):
            h = _shard_hash(self._seed, key, j)
            yield int.from_bytes(h, "big") % self._num_shards, h + packed_ref

    def finish_bundle(self):
        for label, n in self._out.items():
            yield beam.pvalue.TaggedOutput(
                "stats", GlobalWindows.windowed_value((f"out/{label}", n))
            )
        for label, n in self._kept.items():
            yield beam.pvalue.TaggedOutput(
                "stats", GlobalWindows.windowed_value((f"kept/{label}", n))
            )


class _WriteShard(beam.DoFn):
    """(shard, [hash + reference, ...]) -> the shard file, records in hash order.

    Holds one shard's records in memory: they are read in file and offset
    order (sequential reads, not one seek per copy) and then written sorted
    by hash.
    """

    def __init__(self, input_files: list[str], output_dir: str, prefix: str, num_shards: int):
        self._inputs = input_files
        self._dir, self._prefix, self._num_shards = output_dir, prefix, num_shards

    def process(self, element):
        shard, items = element
        items = sorted(items)
        refs = [int.from_bytes(item[HASH_BYTES:], "big") for item in items]
        data = record_refs.read_refs(self._inputs, refs)
        path = os.path.join(self._dir, records.shard_name(self._prefix, shard, self._num_shards))
        with records.AtomicWriter(path) as writer:
            for ref in refs:
                writer.write(data[ref])
            kill_points.kill_point("filter_balance_shard", shard=shard)
        yield shard, writer.count


def _stats_line(kv):
    return json.dumps(list(kv))


def build_pipeline(
    pipeline: beam.Pipeline,
    input_files: list[str],
    stats_prefix: str,
    output_dir: str,
    num_classes: int,
    threshold: float,
    images_per_class: int,
    num_output_shards: int,
    seed: int,
    check_images: bool,
    output_prefix: str,
    balance: str = "exact",
) -> None:
    """Adds the filter/balance transforms to `pipeline` (see the module docstring)."""
    k = images_per_class
    classified = (
        pipeline
        | "Files" >> beam.Create(list(enumerate(input_files)))
        | "SpreadFiles" >> beam.Reshuffle()
        | "Read" >> beam.FlatMap(_read_indexed)
        | "Classify"
        >> beam.ParDo(_Classify(num_classes, threshold, check_images)).with_outputs(
            "stats", main="candidates"
        )
    )
    candidates = classified.candidates
    counts = (
        candidates
        | "Ones" >> beam.Map(lambda kv: (kv[0], 1))
        | "CountPerClass" >> beam.CombinePerKey(sum)
    )
    stats = [classified.stats]
    if k and balance == "official":
        kept = _official_balance(candidates, stats, threshold, k, seed)
    elif k:
        kept = _exact_balance(candidates, counts, stats, k, seed)
    else:
        kept = candidates | "KeepAll" >> beam.Map(lambda kv: (kv[0], kv[1][1], 1, kv[1][2]))
    expanded = kept | "Expand" >> beam.ParDo(_Expand(seed, num_output_shards)).with_outputs(
        "stats", main="copies"
    )
    stats.append(expanded.stats)
    _ = (
        expanded.copies
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards"
        >> beam.ParDo(_WriteShard(input_files, output_dir, output_prefix, num_output_shards))
    )
    _ = (
        tuple(stats)
        | "AllStats" >> beam.Flatten()
        | "SumStats" >> beam.CombinePerKey(sum)
        | "StatsJson" >> beam.Map(_stats_line)
        | "WriteStats" >> beam.io.WriteToText(stats_prefix)
    )


def _official_balance(candidates, stats: list, threshold: float, k: int, seed: int):
    """balance="official": per-class level counts, then a coin per record.

    Appends its stats PCollections to `stats`; returns the kept
    (class, key, copies, reference) records.
    """
    levels = threshold_levels(threshold)
    plans = (
        candidates
        | "Levels" >> beam.Map(lambda kv: ((kv[0], int(level_index(-kv[1][0], levels))), 1))
        | "CountPerLevel" >> beam.CombinePerKey(sum)
        | "ByClass" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
        | "LevelsPerClass" >> beam.GroupByKey()
        | "OfficialPlan" >> beam.Map(_official_plan, levels=levels, images_per_class=k)
    )
    routed = candidates | "Coins" >> beam.ParDo(
        _Coins(k, seed), plans=beam.pvalue.AsDict(plans)
    ).with_outputs("stats", main="kept")
    stats.append(routed.stats)
    stats.append(
        plans | "ThresholdStats" >> beam.Map(lambda kv: (f"class_threshold/{kv[0]}", kv[1][0]))
    )
    return routed.kept


def _exact_balance(candidates, counts, stats: list, k: int, seed: int):
    """balance="exact": top-K cutoffs for over-full classes, copy counts for the rest.

    Appends its stats PCollection to `stats`; returns the kept
    (class, key, copies, reference) records.
    """
    plans = (
        candidates
        | "Pairs" >> beam.Map(lambda kv: (kv[0], (kv[1][0], kv[1][1])))
        | "TopKPerClass" >> beam.combiners.Top.PerKey(k, reverse=True)
        | "Plan"
        >> beam.FlatMap(_plan, counts=beam.pvalue.AsDict(counts), images_per_class=k, seed=seed)
    )
    cutoffs = (
        plans
        | "Cutoffs" >> beam.Filter(lambda p: p[0] == "cutoff")
        | "CutoffKV" >> beam.Map(lambda p: (p[1], p[2]))
    )
    copies = (
        plans
        | "Copies" >> beam.Filter(lambda p: p[0] == "copies")
        | "CopiesKV" >> beam.Map(lambda p: (p[1], p[2]))
    )
    routed = candidates | "Route" >> beam.ParDo(
        _Route(k), counts=beam.pvalue.AsDict(counts), cutoffs=beam.pvalue.AsDict(cutoffs)
    ).with_outputs("under", "stats", main="kept")
    joined = (
        {"records": routed.under, "copies": copies}
        | "JoinCopies" >> beam.CoGroupByKey()
        | "WithCopies" >> beam.FlatMap(_join_copies)
    )
    stats.append(routed.stats)
    return (routed.kept, joined) | "AllKept" >> beam.Flatten()


def _read_stats(stats_dir: str) -> dict:
    stats = {}
    for path in tf.io.gfile.glob(os.path.join(stats_dir, "*")):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                name, value = json.loads(line)
                stats[name] = stats.get(name, 0) + value
    return stats


def infer_num_classes(input_files: list[str], max_records: int = 1000) -> int | None:
    """The teacher's class count, from what tools/label.py left beside the shards.

    In order: the per-shard manifests (`SHARD.manifest.json`), the folder's
    `manifest.json`, then the length of `teacher/probs` in the first records
    (at most `max_records` are read). Top-k records do not tell the class
    count, so without a manifest they give None.

    Raises:
      ConfigError: the sources disagree (shards labeled by different teachers).
    """
    found = {}
    folders = sorted({os.path.dirname(f) for f in input_files})
    for path in [f + MANIFEST_SUFFIX for f in input_files] + [
        os.path.join(d, "manifest.json") for d in folders
    ]:
        if tf.io.gfile.exists(path):
            value = records.read_json(path).get("num_classes")
            if value:
                found.setdefault(int(value), path)
    if not found:
        read = 0
        for path in input_files:
            for serialized in records.read_records(path):
                read += 1
                try:
                    feature = tf.train.Example.FromString(serialized).features.feature
                except Exception:  # noqa: BLE001 - a bad record is counted by the pipeline
                    continue
                if schema.TEACHER_PROBS in feature:
                    length = len(feature[schema.TEACHER_PROBS].float_list.value)
                    if length:
                        found.setdefault(length, f"the teacher/probs of {path!r}")
                        break
                if read >= max_records:
                    break
            if found or read >= max_records:
                break
    if len(found) > 1:
        raise ConfigError(
            "the inputs disagree on the number of classes: "
            + ", ".join(f"{n} ({where})" for n, where in sorted(found.items()))
        )
    return next(iter(found)) if found else None


def resolve_num_classes(input_files: list[str], num_classes: int | None) -> int:
    """`num_classes` checked against the inputs, or inferred from them when None/0."""
    if num_classes is not None and num_classes < 0:
        raise ConfigError(f"--num_classes must be >= 1, got {num_classes}")
    inferred = infer_num_classes(input_files)
    if num_classes:
        if inferred is not None and inferred != num_classes:
            raise ConfigError(
                f"--num_classes={num_classes} but the inputs say {inferred} "
                "(labeling manifest or teacher/probs length)"
            )
        return int(num_classes)
    if inferred is None:
        raise ConfigError(
            "--num_classes is not set and the inputs do not give it (no labeling "
            "manifest.json beside them, and top-k records do not carry the class count)"
        )
    return inferred


def _check_arguments(
    input_files: list[str],
    threshold: float,
    images_per_class: int,
    num_output_shards: int,
    balance: str,
) -> None:
    """Rejects bad arguments and missing inputs before any output is touched."""
    validate_threshold(threshold)
    validate_balance(balance)
    if images_per_class < 0 or num_output_shards < 1:
        raise ConfigError(
            f"--images_per_class must be >= 0 (got {images_per_class}) and "
            f"--num_output_shards >= 1 (got {num_output_shards})"
        )
    if not input_files:
        raise FileNotFoundError("no input files given")
    for path in input_files:
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"input file {path!r} does not exist")


def _clear_output(output_dir: str, output_prefix: str) -> str:
    """Removes a previous run's shards and stats (a rerun replaces the whole output).

    Returns:
      The (now absent) folder the pipeline writes its stats into.
    """
    tf.io.gfile.makedirs(output_dir)
    shards = os.path.join(output_dir, f"{output_prefix}-*-of-*.tfrecord")
    # The manifest first: until the new one is written, none says "complete".
    # Then a killed run's temporary shards and manifest (`records.TMP_MARK`).
    manifest = os.path.join(output_dir, "manifest.json")
    patterns = (
        manifest,
        shards,
        shards + records.TMP_MARK + "*",
        manifest + records.TMP_MARK + "*",
    )
    for pattern in patterns:
        for old in tf.io.gfile.glob(pattern):
            tf.io.gfile.remove(old)
    stats_dir = os.path.join(output_dir, "_stats")
    if tf.io.gfile.exists(stats_dir):
        tf.io.gfile.rmtree(stats_dir)
    return stats_dir


def _complete_shards(output_dir: str, output_prefix: str, num_output_shards: int) -> list[str]:
    """All S output shard names; shards that received no record are written empty."""
    shards = []
    for i in range(num_output_shards):
        path = os.path.join(output_dir, records.shard_name(output_prefix, i, num_output_shards))
        if not tf.io.gfile.exists(path):
            records.AtomicWriter(path).commit()
        shards.append(os.path.basename(path))
    return shards


def _run_pipeline(pipeline_args: list[str] | None, stats_dir: str, **settings) -> dict:
    """Runs `build_pipeline(**settings)` on Beam; returns its stats, summed (stats_dir is removed)."""
    beam_runner.run(
        pipeline_args,
        lambda pipeline: build_pipeline(
            pipeline, stats_prefix=os.path.join(stats_dir, "part"), **settings
        ),
        "filter_balance",
    )
    stats = _read_stats(stats_dir)
    tf.io.gfile.rmtree(stats_dir)
    return stats


def _write_manifest(manifest: dict, output_dir: str, plots: bool) -> None:
    """Adds the plots (if asked), writes manifest.json and logs the run in one line."""
    if plots:
        manifest["plots"] = report.plot_filter_balance(manifest, output_dir)
    records.write_json(os.path.join(output_dir, "manifest.json"), manifest)
    logging.info(
        "filter_balance: %d in, %d out records in %d shards (%.1f s)",
        manifest["in"],
        manifest["out_records"],
        manifest["num_output_shards"],
        manifest["elapsed_s"],
    )


def run_filter_balance(
    input_files: list[str],
    output_dir: str,
    num_classes: int | None = None,
    threshold: float = 0.3,
    images_per_class: int = 0,
    num_output_shards: int = 1,
    seed: int = 0,
    check_images: bool = False,
    output_prefix: str = "pseudo",
    pipeline_args: list[str] | None = None,
    plots: bool = True,
    balance: str = "exact",
) -> dict:
    """Runs the pipeline; writes shards, manifest.json and plots into `output_dir`.

    Args:
      input_files: pseudo-labeled shards (tools/label.py output).
      num_classes: the teacher's class count (probability vectors must match);
        None or 0 infers it (`infer_num_classes`); given, it must agree with
        what the inputs say.
      threshold: keep records with teacher/confidence >= threshold (paper: 0.3).
      images_per_class: K (paper: 130K for ImageNet); 0 keeps every record
        above the threshold, unbalanced.
      num_output_shards: output files `PREFIX-0000i-of-S.tfrecord`; each is
        sorted in one worker, so choose S so that a shard fits in memory.
      seed: duplication choice and output order; same seed, same bytes.
      check_images: also decode every image and drop undecodable ones.
      pipeline_args: Beam options, e.g. ["--runner=DataflowRunner", ...] or
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"];
        without a runner, this machine's (beam_runner.py). The output bytes
        do not depend on the runner or its parallelism.
      balance: "exact" (K per class exactly) or "official" (the official
        code's per-class threshold and coin flips; K on average). See
        select.py.

    Returns:
      The manifest (see docs/data_format.md).
    """
    _check_arguments(input_files, threshold, images_per_class, num_output_shards, balance)
    num_classes = resolve_num_classes(input_files, num_classes)
    timer = records.Timer()
    stats_dir = _clear_output(output_dir, output_prefix)
    stats = _run_pipeline(
        pipeline_args,
        stats_dir,
        input_files=input_files,
        output_dir=output_dir,
        num_classes=num_classes,
        threshold=threshold,
        images_per_class=images_per_class,
        num_output_shards=num_output_shards,
        seed=seed,
        check_images=check_images,
        output_prefix=output_prefix,
        balance=balance,
    )
    shards = _complete_shards(output_dir, output_prefix, num_output_shards)
    official = balance == "official" and bool(images_per_class)
    manifest = build_manifest(stats, num_classes, threshold if official else None)
    manifest.update(
        {
            "stage": "filter_balance",
            "inputs": len(input_files),
            "num_classes": num_classes,
            "threshold": threshold,
            "images_per_class": images_per_class,
            "balance": balance,
            "seed": seed,
            "check_images": check_images,
            "num_output_shards": num_output_shards,
            "shards": shards,
            "pipeline_args": list(pipeline_args or []),
            "elapsed_s": timer.elapsed(),
        }
    )
    _write_manifest(manifest, output_dir, plots)
    return manifest


def build_manifest(stats: dict, num_classes: int, official_threshold: float | None = None) -> dict:
    """Counts in, kept, dropped by reason and per class, from the pipeline's stats.

    With `official_threshold` (the global threshold of an "official" run),
    each class row also gets its raised `threshold` (the global one for a
    class without candidates).
    """
    invalid = {
        name.split("/", 1)[1]: n for name, n in sorted(stats.items()) if name.startswith("invalid/")
    }
    per_class = []
    for c in range(num_classes):
        kept = stats.get(f"kept/{c}", 0)
        out = stats.get(f"out/{c}", 0)
        row = {
            "class": c,
            "total": stats.get(f"total/{c}", 0),
            "candidates": stats.get(f"candidates/{c}", 0),
            "kept": kept,
            "copies": out,
            "duplicated": out - kept,
        }
        if official_threshold is not None:
            row["threshold"] = stats.get(f"class_threshold/{c}", float(official_threshold))
        per_class.append(row)
    kept_unique = sum(p["kept"] for p in per_class)
    dropped = {
        "below_threshold": stats.get("below_threshold", 0),
        "over_quota": stats.get("over_quota", 0),
        "invalid": invalid,
    }
    num_dropped = dropped["below_threshold"] + dropped["over_quota"] + sum(invalid.values())
    num_in = stats.get("in", 0)
    if num_in != kept_unique + num_dropped:
        raise RuntimeError(
            f"filter_balance counts do not add up: {num_in} in, "
            f"{kept_unique} kept, {num_dropped} dropped ({dropped})"
        )
    hist = [stats.get(f"hist/{b}", 0) for b in range(HIST_BINS)]
    return {
        "in": num_in,
        "kept_unique": kept_unique,
        "dropped": dropped,
        "num_dropped": num_dropped,
        "out_records": sum(p["copies"] for p in per_class),
        "per_class": per_class,
        "confidence_histogram": {
            "edges": np.linspace(0, 1, HIST_BINS + 1).round(3).tolist(),
            "counts": hist,
        },
    }
