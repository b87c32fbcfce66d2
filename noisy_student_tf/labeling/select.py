"""Filter pseudo labels by confidence and balance them per class.

The paper (section 2, "Data filtering and balancing"; ImageNet setup in
section 3.1): drop images whose teacher confidence is below a threshold
(0.3), then give every class the same number of images (130K for ImageNet):
a class with more candidates keeps its most confident ones, a class with
fewer duplicates them. The official code duplicates with a per-image coin
flip, which reaches the target only on average; here each of the n
candidates gets floor(K / n) copies and a seeded choice of K mod n of them
one more, so the class holds exactly K records.

This in-memory version serves the CPU loop; tools/filter_balance.py applies
the same rule with Apache Beam at JFT scale.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Selection:
    """Which pool records to train on (with repeats) and why others were dropped."""

    indices: np.ndarray  # int64 [K_total]; into the unlabeled pool, repeats allowed
    per_class: list  # dicts: class, candidates, kept, copies
    num_in: int
    num_below_threshold: int
    num_over_quota: int  # confident records dropped because their class was full

    @property
    def num_kept_unique(self) -> int:
        return int(len(np.unique(self.indices)))

    def manifest(self) -> dict:
        return {"in": self.num_in, "kept_unique": self.num_kept_unique,
                "dropped_below_threshold": self.num_below_threshold,
                "dropped_over_quota": self.num_over_quota,
                "out_records": int(len(self.indices)), "per_class": self.per_class}


def validate_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"confidence threshold must be in [0, 1], got {threshold}")


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


def filter_and_balance(probs: np.ndarray, threshold: float = 0.3,
                       images_per_class: int | None = None, seed: int = 0) -> Selection:
    """Applies the paper's filter and balance rule to teacher predictions.

    Args:
      probs: float [N, C], the teacher's (temperature-1) distribution.
      threshold: keep records whose max probability is >= threshold (0.3).
      images_per_class: K; None or 0 keeps every confident record unbalanced.
      seed: for the choice of which under-full candidates get an extra copy;
        class c draws from `class_rng(seed, c)`.
    """
    validate_threshold(threshold)
    probs = np.asarray(probs)
    confidence = probs.max(axis=-1)
    predicted = probs.argmax(axis=-1)
    confident = confidence >= threshold
    chosen, per_class, over_quota = [], [], 0
    for c in range(probs.shape[-1]):
        candidates = np.flatnonzero(confident & (predicted == c))
        # Most confident first; ties broken by index so the result is stable.
        candidates = candidates[np.lexsort((candidates, -confidence[candidates]))]
        n = len(candidates)
        if not images_per_class:
            kept, copies = candidates, np.ones(n, np.int64)
        elif n >= images_per_class:
            kept, copies = candidates[:images_per_class], np.ones(images_per_class, np.int64)
            over_quota += n - images_per_class
        elif n > 0:
            kept, copies = candidates, balanced_quota(n, images_per_class, class_rng(seed, c))
        else:
            kept, copies = candidates, np.zeros(0, np.int64)
        chosen.append(np.repeat(kept, copies))
        per_class.append({"class": c, "candidates": int(n), "kept": int(len(kept)),
                          "copies": int(copies.sum())})
    indices = np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)
    return Selection(indices, per_class, num_in=len(probs),
                     num_below_threshold=int((~confident).sum()), num_over_quota=over_quota)
