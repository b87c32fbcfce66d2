"""Which Beam runner the labeling and filter/balance pipelines run on, chosen here.

Without `--runner`, Beam 2.78 picks its `DirectRunner`, which is a switch:
it first tries the PrismRunner, whose binary it downloads from GitHub at run
time (apache_beam/runners/direct/direct_runner.py, SwitchingDirectRunner),
and falls back to the in-process runner only if that fails. A batch job
that labels or filters records should not depend on the network or on which
binary a release fetches, so both pipelines build their Pipeline here:

- no `--runner`, or `--runner=DirectRunner` / `direct`: Beam's in-process
  batch runner (the FnApiRunner the switch falls back to), with Beam's own
  `--direct_num_workers` and `--direct_running_mode` (`in_memory`,
  `multi_threading`, `multi_processing`) honoured as Beam documents them;
- any other name (`DataflowRunner`, `FlinkRunner`, `SparkRunner`,
  `PrismRunner`, `SwitchingDirectRunner` for Beam's own switch): passed to
  Beam unchanged.

The runner that ran is logged, with the worker settings for the local one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import apache_beam as beam
from absl import logging
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
)
from apache_beam.runners.runner import PipelineResult, PipelineState

# Runner names (lower case) that mean "this machine": Beam's DEFAULT_RUNNER
# and its short form (apache_beam/runners/runner.py, _RUNNER_MAP).
LOCAL_RUNNER_NAMES = ("directrunner", "direct")


def describe(pipeline_args: Sequence[str] | None) -> str:
    """The runner `pipeline_args` select, as logged, e.g. 'DirectRunner (multi_processing, 2 workers)'."""
    options = PipelineOptions(list(pipeline_args or []))
    name = options.view_as(StandardOptions).runner
    if name is not None and name.lower() not in LOCAL_RUNNER_NAMES:
        return name
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "in_memory":  # one worker whatever direct_num_workers says
        return "DirectRunner (in_memory, this process)"
    workers = direct.direct_num_workers or "one per CPU"
    return f"DirectRunner ({direct.direct_running_mode}, {workers} workers)"


def _local_runner(options: PipelineOptions):
    """Beam's in-process batch runner, set up as SwitchingDirectRunner sets up its fallback.

    The provision info carries the pipeline options to the workers, so a
    `multi_processing` worker sees the same options as this process.
    """
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    )
    return fn_runner.FnApiRunner(provision_info=info)


def run(
    pipeline_args: Sequence[str] | None,
    build: Callable[[beam.Pipeline], None],
    what: str,
) -> PipelineResult:
    """Builds a pipeline with `build`, runs it to the end on the chosen runner, logs which.

    Args:
      pipeline_args: Beam's options (e.g. ["--runner=DataflowRunner",
        "--project=P", ...] or ["--direct_running_mode=multi_processing",
        "--direct_num_workers=2"]); none runs in this machine.
      build: adds the transforms to the pipeline.
      what: the stage, for the log line.

    Returns:
      The finished pipeline's result (its metrics, for the caller's log).

    Raises:
      RuntimeError: the pipeline did not finish in state DONE.
    """
    options = PipelineOptions(list(pipeline_args or []))
    name = options.view_as(StandardOptions).runner
    local = name is None or name.lower() in LOCAL_RUNNER_NAMES
    runner = _local_runner(options) if local else name
    description = describe(pipeline_args)
    logging.info("%s: Beam runner %s", what, description)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build(pipeline)
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise RuntimeError(f"{what}: the Beam pipeline ended in state {state} on {description}")
    logging.info("%s: ran on %s", what, description)
    return result
