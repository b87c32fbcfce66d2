"""Filter pseudo labels by confidence and balance them per class.

The paper (section 2, "Data filtering and balancing"; ImageNet setup in
section 3.1): drop images whose teacher confidence is below a threshold
(0.3), then give every class the same number of images K (130K for
ImageNet): a class with more candidates keeps its most confident ones, a
class with fewer duplicates them. Two ways to do it:

`balance="exact"` (default): a class with n > K candidates keeps exactly its
K most confident; with 0 < n <= K, each candidate gets floor(K / n) copies
and a seeded choice of K mod n of them one more, so every class holds
exactly K records.

`balance="official"`: the rule of the official code
(google-research/noisystudent, `filter_unlabel.py`: `get_threshold` and
`get_keep_image_idx`), which reaches K only on average:

- a class's threshold is raised from the global one on a 0.01 grid (the
  official `prob_threshold = i / 100`, i = 0..100) to the highest level at
  which at least K of its images still pass; a class with fewer than K
  passing the global threshold keeps the global threshold;
- with P images passing the class threshold, each passing image gets
  int(K / P) copies plus one more with probability K / P - int(K / P), a
  coin flip per image. For P > K that keeps each image with probability
  K / P; for P < K it duplicates.

The coin of an image is `coin(seed, key)`, a hash of the seed and its key,
not a draw from a stream, so the Beam pipeline (beam_filter.py) flips the
same coins without ordering its records, and both give the same selection.

This in-memory version serves the CPU loop; tools/filter_balance.py applies
the same rules with Apache Beam at JFT scale.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from noisy_student_tf.errors import ConfigError

BALANCE_MODES = ("exact", "official")
# Official filter_unlabel.py: candidate class thresholds are i / 100, i = 0..100.
GRID_HUNDREDTHS = 100


@dataclasses.dataclass
class Selection:
    """Which pool records to train on (with repeats) and why others were dropped."""

    indices: np.ndarray  # int64 [K_total]; into the unlabeled pool, repeats allowed
    per_class: list  # dicts: class, candidates, kept, copies (+ threshold if official)
    num_in: int
    num_below_threshold: int
    num_over_quota: int  # confident records dropped because their class was full

    @property
    def num_kept_unique(self) -> int:
        return int(len(np.unique(self.indices)))

    def manifest(self) -> dict:
        return {
            "in": self.num_in,
            "kept_unique": self.num_kept_unique,
            "dropped_below_threshold": self.num_below_threshold,
            "dropped_over_quota": self.num_over_quota,
            "out_records": int(len(self.indices)),
            "per_class": self.per_class,
        }


def validate_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"confidence threshold must be in [0, 1], got {threshold}")


def validate_balance(balance: str) -> None:
    if balance not in BALANCE_MODES:
        raise ConfigError(f"balance must be one of {', '.join(BALANCE_MODES)}; got {balance!r}")


def class_rng(seed: int, class_index: int) -> np.random.Generator:
    """The duplication choice's generator for one class, seeded by (seed, class).

    Seeding per class (not one stream over all classes) lets a distributed
    pipeline (tools/filter_balance.py) make the same choice for a class
    without knowing the order in which other classes were processed.
    """
    return np.random.default_rng([int(seed), int(class_index)])


def balanced_quota(num_candidates: int, quota: int, rng: np.random.Generator) -> np.ndarray:
    """Copies per candidate so that n candidates fill exactly `quota` slots.

    Each gets floor(quota / n); a seeded choice of (quota mod n) gets one more.
    """
    copies = np.full(num_candidates, quota // num_candidates, np.int64)
    extra = rng.choice(num_candidates, size=quota % num_candidates, replace=False)
    copies[extra] += 1
    return copies


def threshold_levels(threshold: float) -> np.ndarray:
    """float64 [L]: the global threshold, then each hundredth above it up to 1.0.

    For a threshold on the grid (0.3) these are the official levels at or
    above it; an off-grid threshold is its own lowest level.
    """
    grid = (i / GRID_HUNDREDTHS for i in range(GRID_HUNDREDTHS + 1))
    above = [level for level in grid if level > threshold + 1e-9]
    return np.asarray([threshold, *above], np.float64)


def level_index(confidence, levels: np.ndarray):
    """Index of the highest level <= confidence (compared in float32); 0 at least."""
    levels = np.asarray(levels, np.float32)  # compared as the filter compares, in float32
    j = np.searchsorted(levels, np.asarray(confidence, np.float32), side="right") - 1
    return np.maximum(j, 0)


def official_plan(level_counts: Sequence[int], images_per_class: int) -> tuple[int, int]:
    """(level index, images passing it) of one class under the official rule.

    Args:
      level_counts: candidates of the class per level (`level_index`), [L].
      images_per_class: K.

    The highest level with at least K passing, else level 0 (the global
    threshold), as the official `get_threshold` (use_top=1).
    """
    passing = np.cumsum(np.asarray(level_counts, np.int64)[::-1])[::-1]  # at or above level j
    enough = np.flatnonzero(passing >= images_per_class)
    j = int(enough[-1]) if len(enough) else 0
    return j, int(passing[j]) if len(passing) else 0


def coin(seed: int, key: bytes) -> float:
    """A uniform [0, 1) draw for one image, from a hash of (seed, image key)."""
    digest = hashlib.blake2b(b"official-coin\0%d\0%s" % (int(seed), key), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2.0**64


def official_copies(images_per_class: int, passing: int, seed: int, key: bytes) -> int:
    """int(K / P) copies, one more with probability K / P - int(K / P) (the coin)."""
    ratio = images_per_class / passing
    whole = int(ratio)
    return whole + int(coin(seed, key) < ratio - whole)


def _official_class(candidates, confidence, levels, k, seed, keys):
    """(kept indices, copies, class threshold) of one class's candidates."""
    conf = confidence[candidates]
    counts = np.bincount(level_index(conf, levels), minlength=len(levels))
    j, passing = official_plan(counts, k)
    passed = candidates[np.asarray(conf, np.float32) >= np.float32(levels[j])]
    copies = np.array([official_copies(k, passing, seed, keys[i]) for i in passed], np.int64)
    keep = copies > 0
    return passed[keep], copies[keep], float(levels[j])


def filter_and_balance(
    probs: np.ndarray,
    threshold: float = 0.3,
    images_per_class: int | None = None,
    seed: int = 0,
    balance: str = "exact",
    keys: Sequence[bytes] | None = None,
) -> Selection:
    """Applies the paper's filter and balance rule to teacher predictions.

    Args:
      probs: float [N, C], the teacher's (temperature-1) distribution.
      threshold: keep records whose max probability is >= threshold (0.3).
      images_per_class: K; None or 0 keeps every confident record unbalanced.
      seed: for the duplication choice ("exact": class c draws from
        `class_rng(seed, c)`) or the per-image coins ("official").
      balance: "exact" or "official" (see the module docstring).
      keys: "official" only: the image keys [N] the coins hash, as the Beam
        pipeline reads them from `image/key`; default `b"%d" % index`.
    """
    validate_threshold(threshold)
    validate_balance(balance)
    probs = np.asarray(probs)
    confidence = probs.max(axis=-1)
    predicted = probs.argmax(axis=-1)
    confident = confidence >= threshold
    official = balance == "official" and bool(images_per_class)
    if official:
        levels = threshold_levels(threshold)
        keys = [b"%d" % i for i in range(len(probs))] if keys is None else list(keys)
        if len(keys) != len(probs):
            raise ConfigError(f"keys has {len(keys)} entries for {len(probs)} predictions")
    chosen, per_class, over_quota = [], [], 0
    for c in range(probs.shape[-1]):
        candidates = np.flatnonzero(confident & (predicted == c))
        # Most confident first; ties broken by index so the result is stable.
        candidates = candidates[np.lexsort((candidates, -confidence[candidates]))]
        n = len(candidates)
        row = {"class": c, "candidates": int(n)}
        if not images_per_class:
            kept, copies = candidates, np.ones(n, np.int64)
        elif official:
            kept, copies, row["threshold"] = _official_class(
                candidates, confidence, levels, images_per_class, seed, keys
            )
        elif n >= images_per_class:
            kept, copies = candidates[:images_per_class], np.ones(images_per_class, np.int64)
        elif n > 0:
            kept, copies = candidates, balanced_quota(n, images_per_class, class_rng(seed, c))
        else:
            kept, copies = candidates, np.zeros(0, np.int64)
        over_quota += n - len(kept)
        chosen.append(np.repeat(kept, copies))
        per_class.append({**row, "kept": int(len(kept)), "copies": int(copies.sum())})
    indices = np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)
    return Selection(
        indices,
        per_class,
        num_in=len(probs),
        num_below_threshold=int((~confident).sum()),
        num_over_quota=over_quota,
    )
