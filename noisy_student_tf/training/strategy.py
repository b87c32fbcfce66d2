"""The one way to pick a tf.distribute strategy: by name, from the config.

  default       no distribution (one CPU or GPU)
  mirrored      all local GPUs (MirroredStrategy); on a machine without GPUs,
                the logical CPUs that NOISY_STUDENT_LOGICAL_CPUS asks for
  multi_worker  MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG
  tpu           TPUStrategy; `tpu_address` is "local" (or "") on a TPU VM or
                Colab, a Cloud TPU name, or "grpc://host:port"

Batch sizes in configs are global; the learning rate scales with them
(noisy_student_tf.training.optimization).

NOISY_STUDENT_LOGICAL_CPUS=N splits the host CPU into N logical devices and
mirrors over them, so the multi-replica code path (per-replica batches,
all-reduced gradients, synchronised batch norm) runs and is tested on a
CPU-only machine. TensorFlow allows that only before it initialises, which
`get_strategy` does first as scripts call it before any other TF op.

Multi-worker runs fail rather than hang when a worker dies: the
coordination service's heartbeat notices a silent peer after
`heartbeat_timeout_s` and aborts the collectives of the others, and
`worker_failures_reported` turns what then surfaces from fit() into one
`WorkerFailure` naming the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import re

import tensorflow as tf

from noisy_student_tf.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
LOGICAL_CPUS_ENV = "NOISY_STUDENT_LOGICAL_CPUS"
# A worker silent for this long is declared dead; TF's default is 10 s.
# Longer than the longest host-side pause between steps (checkpointing,
# labeling runs inside the collective program on every worker).
HEARTBEAT_TIMEOUT_S = 30
# Cloud TPU node names: lower-case letters, digits and hyphens, starting
# with a letter (gcloud's rule for resource names).
_TPU_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_GRPC_ADDRESS = re.compile(r"^grpc://[^\s:/]+:\d{1,5}$")


class WorkerFailure(RuntimeError):
    """A peer of a multi-worker run stopped responding; the run cannot go on."""


def tpu_resolver_argument(address: str) -> str:
    """The `tpu=` argument for TPUClusterResolver, from the config's `tpu_address`.

    Accepts "" or "local" (a TPU VM or Colab's attached TPU), a Cloud TPU
    node name, or "grpc://host:port" (a TPU node's gRPC endpoint, the form
    Colab's old TPU runtime exported as COLAB_TPU_ADDR).

    Raises:
      ConfigError: any other form, naming `tpu_address`.
    """
    address = address.strip()
    if address in ("", "local"):
        return "local"
    if address.startswith("grpc://"):
        if not _GRPC_ADDRESS.match(address):
            raise ConfigError(
                f"tpu_address={address!r} is not a gRPC address; expected grpc://host:port"
            )
        return address
    if _TPU_NAME.match(address):
        return address
    raise ConfigError(
        f"tpu_address={address!r} is not 'local', a TPU name (lower-case letters, digits "
        f"and '-') or grpc://host:port"
    )


def logical_cpus() -> int:
    """The NOISY_STUDENT_LOGICAL_CPUS setting; 0 when unset."""
    value = os.environ.get(LOGICAL_CPUS_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{LOGICAL_CPUS_ENV}={value!r} must be a positive integer")
    return int(value)


def _split_cpu(count: int) -> list[str]:
    """Configures `count` logical CPUs (before TF initialises) and returns their names."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * count
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != count:
        try:
            tf.config.set_logical_device_configuration(cpu, wanted)
        except RuntimeError as e:
            raise ConfigError(
                f"{LOGICAL_CPUS_ENV}={count} came too late: TensorFlow was already "
                f"initialised ({e}); create the strategy before any other TF op"
            ) from e
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _configure_heartbeat(heartbeat_timeout_s: float) -> None:
    """Sets the coordination service's heartbeat timeout from TF_CONFIG's cluster.

    MultiWorkerMirroredStrategy configures the service itself (with TF's
    10 s default) only when none is configured yet, so setting it first
    makes the timeout ours. The leader is the chief, or worker 0 without one.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    jobs = [job for job in ("chief", "worker") if cluster.get(job)]
    if not jobs:
        return  # single-worker: nothing to watch
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{jobs[0]}/replica:0/task:0",
        heartbeat_timeout_in_ms=int(heartbeat_timeout_s * 1000),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
            for job in jobs
        ],
    )


def get_strategy(
    name: str = "default",
    tpu_address: str = "",
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
) -> tf.distribute.Strategy:
    """Returns the strategy named `name`; a ConfigError lists the valid names.

    Args:
      name: one of STRATEGIES (the config's `strategy`).
      tpu_address: the config's `tpu_address` (tpu only; see
        `tpu_resolver_argument`).
      heartbeat_timeout_s: multi_worker only: after how long a silent worker
        fails the run.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        count = logical_cpus()
        if count and not tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy(_split_cpu(count))
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        _configure_heartbeat(heartbeat_timeout_s)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu_resolver_argument(tpu_address)
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"strategy={name!r} is not one of {STRATEGIES}")


# What collectives raise on the surviving workers once a peer is gone.
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.InternalError,
)


def _describe_failure(error: Exception) -> str:
    """Names the dead task(s) from a collective error, with their addresses."""
    text = getattr(error, "message", "") or str(error)
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster, task = config.get("cluster", {}), config.get("task", {})
    dead = []
    for job, index in dict.fromkeys(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text)):
        addresses = cluster.get(job, [])
        where = f" at {addresses[int(index)]}" if int(index) < len(addresses) else ""
        dead.append(f"{job} {index}{where}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = next((line for line in lines if "unhealthy" in line or "aborted" in line), lines[0])
    who = ", ".join(dead) if dead else "a worker"
    return (
        f"{who} of the multi-worker cluster stopped responding, so "
        f"{task.get('type', 'this task')} {task.get('index', '')} cannot go on "
        f"({type(error).__name__}: {cause[:300]}). Restart all workers with the same "
        f"TF_CONFIG and --workdir"
    )


@contextlib.contextmanager
def worker_failures_reported(strategy: tf.distribute.Strategy):
    """Re-raises a dead peer's collective errors as one clear `WorkerFailure`.

    Only under MultiWorkerMirroredStrategy; other strategies' errors pass
    unchanged. The original error stays chained for its details.
    """
    try:
        yield
    except _PEER_ERRORS as e:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise WorkerFailure(_describe_failure(e)) from e
