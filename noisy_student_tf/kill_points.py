"""Named places where a test may SIGKILL the process: crash safety tested without races.

TEST-ONLY. Nothing in a normal run sets `NOISY_STUDENT_KILL_AT`, and then
`kill_point` is one dictionary lookup. A test sets it in a child process's
environment to `NAME` or `NAME:N`; the N-th time (default the first) that
process reaches the point called NAME, it kills itself with SIGKILL, as a
preemption or the OOM killer would: no exception handler, `finally` or
`atexit` runs. The test then reruns the same command and checks the rerun
ends as an uninterrupted run does (tests/test_kill_points.py).

The points (grep `kill_point(` for the places):

  teacher_step, student_step  after an optimizer step of a teacher's or a
                      student's fit() (after that step's periodic
                      checkpoint, if one falls there); N counts the steps
                      this process ran
  keras_saved         a model written to its temporary `.keras` name, not
                      yet renamed (models/artifact.py `save_keras`)
  saved_model_written a SavedModel written to its temporary folder, not yet
                      renamed (evaluation/export.py)
  label_shard         a labeled shard and its manifest committed
                      (labeling/shards.py; the loop and tools/label.py)
  filter_balance_shard  inside the Beam filter/balance pipeline: an output
                      shard's records written to its temporary name, not yet
                      renamed (labeling/beam_filter.py)
  make_records_shard  tools/make_records.py: source shard N-1 renamed to
                      its final name, the later ones still temporary

Polling a workdir for a moment to kill (what the tests did before) races
with the process; a named point is reached at the same place every run.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "NOISY_STUDENT_KILL_AT"

_hits: dict[str, int] = {}


def armed(name: str) -> bool:
    """True if `NOISY_STUDENT_KILL_AT` names this point (for hooks that cost something)."""
    spec = os.environ.get(ENV)
    return bool(spec) and spec.split(":")[0] == name


def kill_point(name: str, **context) -> None:
    """SIGKILLs this process if `NOISY_STUDENT_KILL_AT` is `name[:N]` and this is hit N.

    Args:
      name: the point's name (see the module docstring).
      **context: printed to stderr with the name just before the kill, so a
        test can check where the process died.
    """
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(count or 1):
        shown = " ".join(f"{k}={v}" for k, v in context.items())
        print(f"kill point {name}:{_hits[name]} reached {shown}".rstrip(), file=sys.stderr)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
