"""Several processes, one training run: JAX's multi-controller runtime, joined before any
JAX computation.

Every process (one per host, or several on one machine) runs the same program. Before the
first JAX computation each joins the others::

    from augreg_nb import distributed
    distributed.initialize(coordinator_address="10.0.0.1:1234", num_processes=2,
                           process_id=0)             # 1 on the other host
    # ... then finetune(config) / sweep(...) exactly as on one machine

    augreg-nb finetune --coordinator-address 10.0.0.1:1234 --num-processes 2 --process-id 0

With no arguments, :func:`initialize` joins only when JAX's own cluster detection finds a
cluster of several processes (Cloud TPU pod slices, SLURM, Open MPI, ... or the
``JAX_COORDINATOR_ADDRESS`` variable); on a plain single machine it does nothing, so the same
command runs everywhere. Process ``0`` also hosts the coordination service at
``coordinator_address``. On CPU the processes exchange data through gloo collectives
(selected here before the backend starts); ``local_cpu_devices`` gives each process that
many virtual CPU devices (for tests and demonstrations on one machine).

After joining, :func:`jax.devices` lists the devices of every process, the training mesh
spans them all, each process feeds its own share of every batch, and process 0 alone writes
results, exports and histories (the training state is written by all, each its shards). If
a process dies, the others stop. Usually JAX's coordination service ends them, with its own
message that another task died, once the dead one has been silent for
``heartbeat_timeout_s`` seconds; when a collective fails first because it can no longer
reach the dead process, the command line says so (:func:`lost_peer`) and leaves at once.
The same commands started again resume from the last saved state.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

#: Seconds without a heartbeat after which a process counts as dead (JAX's default: 100).
HEARTBEAT_TIMEOUT_S = 100
#: Seconds a finishing process waits for the others at shutdown (JAX's default: 300).
SHUTDOWN_TIMEOUT_S = 300
#: Seconds a process waits for all the others to join (then it ends with one line naming
#: the missing process); JAX's own limit, set a little later, would abort the process.
JOIN_TIMEOUT_S = 300


def _address_ok(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def check_arguments(coordinator_address: str | None, num_processes: int | None,
                    process_id: int | None) -> bool:
    """Raise ValueError for an incomplete or impossible set; True when they are given."""
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if not any(given):
        return False
    if not all(given):
        missing = [name for name, g in zip(
            ("coordinator_address", "num_processes", "process_id"), given, strict=True)
            if not g]
        raise ValueError(
            f"several processes need all three of coordinator_address, num_processes and "
            f"process_id (--coordinator-address HOST:PORT --num-processes N --process-id I); "
            f"missing: {', '.join(missing)}. Give none of them to run on one machine (or to "
            "let JAX detect a cluster)."
        )
    if not _address_ok(str(coordinator_address)):
        raise ValueError(f"coordinator_address={coordinator_address!r} must be HOST:PORT, e.g. "
                         "10.0.0.1:1234 (the host of process 0 and a free port)")
    if int(num_processes) < 1:
        raise ValueError(f"num_processes={num_processes} must be at least 1")
    if not 0 <= int(process_id) < int(num_processes):
        raise ValueError(f"process_id={process_id} must be in 0..{int(num_processes) - 1} "
                         f"(one distinct id per process)")
    return True


def detected_cluster() -> str | None:
    """The name of the multi-process cluster JAX's own detection finds here, or None.

    ``JAX_COORDINATOR_ADDRESS`` counts as a cluster; otherwise JAX's cluster environments
    (Cloud TPU, SLURM, Open MPI, Kubernetes; not the opt-in ones such as mpi4py) are asked,
    and one counts only when it reports more than one process.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    try:  # JAX's detection itself; its home has moved before, so absence means "none"
        from jax._src import clusters

        kinds = list(clusters.ClusterEnv._cluster_types)
    except (ImportError, AttributeError):
        return None
    for kind in kinds:
        if getattr(kind, "opt_in_only_method", False):
            continue
        try:
            if kind.is_env_present() and int(kind.get_process_count()) > 1:
                return getattr(kind, "name", "") or kind.__name__
        except Exception as err:  # noqa: BLE001 - a half-configured environment: not ours
            logger.debug("cluster detection %s: %s", kind.__name__, err)
    return None


def is_initialized() -> bool:
    """True once this process has joined a multi-process run."""
    import jax

    check = getattr(jax.distributed, "is_initialized", None)
    if check is not None:
        return bool(check())
    from jax._src import distributed as state

    return state.global_state.client is not None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_cpu_devices: int | None = None,
               heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
               shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S,
               join_timeout_s: int = JOIN_TIMEOUT_S,
               on_join_timeout: Callable[[str], Any] | None = None) -> bool:
    """Join the processes of one run (see the module docstring); True when joined.

    All three of ``coordinator_address`` ("HOST:PORT" of process 0), ``num_processes`` and
    ``process_id`` (0 .. num_processes - 1), or none: then JAX's cluster detection decides
    (:func:`detected_cluster`), and without a cluster nothing happens. Must run before any
    JAX computation (else JAX refuses). ``local_cpu_devices`` sets the number of virtual
    CPU devices of this process.
    """
    import jax

    explicit = check_arguments(coordinator_address, num_processes, process_id)
    for name, value, default in (
            ("heartbeat-timeout", heartbeat_timeout_s, HEARTBEAT_TIMEOUT_S),
            ("shutdown-timeout", shutdown_timeout_s, SHUTDOWN_TIMEOUT_S),
            ("join-timeout", join_timeout_s, JOIN_TIMEOUT_S)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"--{name} {value!r} must be a whole number of seconds >= 1 "
                             f"(default {default})")
    if local_cpu_devices is not None:
        _set_cpu_devices(int(local_cpu_devices))
    cluster = None if explicit else detected_cluster()
    if not explicit and cluster is None:
        return False
    if is_initialized():
        return True
    # CPU devices of different processes talk through gloo; harmless for GPU and TPU
    # runs (it only concerns the CPU backend), and it must be set before that starts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {"heartbeat_timeout_seconds": int(heartbeat_timeout_s),
              "shutdown_timeout_seconds": int(shutdown_timeout_s),
              "initialization_timeout": int(join_timeout_s) + JAX_JOIN_GRACE_S}
    accepted = inspect.signature(jax.distributed.initialize).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    if explicit and int(process_id) == 0:
        check_port_free(str(coordinator_address))
    if explicit:
        logger.info("process %d of %d: joining the others at %s (waiting up to %d s, "
                    "--join-timeout)", int(process_id), int(num_processes),
                    coordinator_address, join_timeout_s)
    timer = threading.Timer(join_timeout_s, lambda: (on_join_timeout or _give_up)(
        join_timeout_message(coordinator_address, num_processes, process_id, join_timeout_s)))
    timer.daemon = True
    timer.start()
    try:
        if explicit:
            jax.distributed.initialize(coordinator_address=coordinator_address,
                                       num_processes=int(num_processes),
                                       process_id=int(process_id), **kwargs)
        else:
            jax.distributed.initialize(**kwargs)
    finally:
        timer.cancel()
    logger.info("process %d of %d joined (%s); devices: %d here, %d in all",
                jax.process_index(), jax.process_count(),
                coordinator_address if explicit else f"detected: {cluster}",
                jax.local_device_count(), jax.device_count())
    return True


#: Seconds JAX's own join limit is set beyond ``join_timeout_s`` (JAX aborts at its limit).
JAX_JOIN_GRACE_S = 30


def check_port_free(address: str) -> None:
    """Raise ValueError naming the port when process 0 cannot host the coordination
    service at ``address`` because something listens on that port already (another
    process 0: two commands with the same --process-id, or another program)."""
    import socket

    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", int(port)))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                return  # a port it may not bind here (e.g. privileged): JAX decides
            raise ValueError(
                f"port {port} of the coordinator address {address} is already in use: "
                "another process 0 runs there (did two commands get --process-id 0?) or "
                "another program holds it; stop it or choose a free port in "
                "--coordinator-address for every process") from None


def _answers(address: str) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            return True
    except OSError:
        return False


def join_timeout_message(address, num_processes, process_id, seconds: int) -> str:
    """One line saying which process never joined and what to check."""
    n = int(num_processes) if num_processes is not None else None
    same = ("all commands need the same --coordinator-address and --num-processes and each "
            "its own --process-id")
    if process_id is None or n is None:
        return (f"the processes of this run did not all join within {seconds} s (cluster "
                f"detected by JAX); check that every process was started ({same})")
    if int(process_id) != 0 and not _answers(str(address)):
        return (f"process {process_id} of {n} waited {seconds} s, but nothing answers at "
                f"{address}: process 0 (the coordinator) has not started there or has "
                f"stopped. Start it ({same}), or raise --join-timeout")
    if int(process_id) == 0:
        missing = "process 1" if n == 2 else f"one or more of processes 1 to {n - 1}"
        return (f"process 0 of {n} waited {seconds} s at {address}, but {missing} never "
                f"joined. Start it ({same}), or raise --join-timeout")
    return (f"process {process_id} of {n} waited {seconds} s: process 0 answers at {address} "
            f"but the run did not start: another command with --process-id {process_id} may "
            f"have joined in its place, or the others were given another --num-processes "
            f"({same}); or raise --join-timeout")


def _give_up(message: str) -> None:
    logger.error("%s", message)
    end_now(1)


def agree(label: str, values: dict[str, str], *, timeout_s: int = JOIN_TIMEOUT_S) -> None:
    """Check, in a run of several processes, that every process passes the same ``values``
    (e.g. its resolved config and workdir): one exchange through JAX's key-value store.
    Raises ValueError naming the processes and the keys that differ; nothing in a run of
    one process."""
    if "jax" not in sys.modules or not is_initialized():
        return
    import json

    import jax
    from jax._src import distributed as state

    count, me = jax.process_count(), jax.process_index()
    if count < 2:
        return
    client = state.global_state.client
    prefix = f"augreg_nb/agree/{label}"
    client.key_value_set(f"{prefix}/{me}", json.dumps(values, sort_keys=True))
    for other in range(count):
        if other == me:
            continue
        try:
            theirs = json.loads(client.blocking_key_value_get(f"{prefix}/{other}",
                                                              int(timeout_s) * 1000))
        except Exception as err:  # noqa: BLE001 - the store's timeout or a lost peer
            raise ValueError(
                f"process {other} did not report its config within {timeout_s} s "
                f"({str(err).strip().splitlines()[0][:120] if str(err).strip() else ''}); "
                "start every process with the same command") from None
        differ = sorted(k for k in set(values) | set(theirs) if values.get(k) != theirs.get(k))
        if differ:
            shown = "; ".join(f"{k}: {values.get(k)!s:.40} here, {theirs.get(k)!s:.40} there"
                              for k in differ[:4])
            raise ValueError(
                f"process {me} and process {other} of this run disagree on {', '.join(differ[:8])}"
                f" ({shown}); start every process with the same command, config and workdir "
                "(only --process-id differs)")


def _set_cpu_devices(count: int) -> None:
    """``count`` virtual CPU devices in this process (before the CPU backend starts)."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", count)
    except AttributeError:  # a JAX without the option: the XLA flag does the same
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}"


def is_main_process() -> bool:
    """True in process 0, the one that writes results, exports and logs."""
    import jax

    return jax.process_index() == 0


#: What a collective's error says when another process of the run has gone away: gloo (CPU)
#: or NCCL losing its connection, the coordination service reporting a task as unhealthy.
_PEER_GONE = re.compile(
    r"gloo|nccl|connection (?:reset|refused|closed)|broken pipe|unavailable|heartbeat|"
    r"another task|tasks? (?:have|has) crashed", re.IGNORECASE)


def lost_peer(err: BaseException) -> str | None:
    """When this process belongs to a run of several and ``err`` is a collective failing
    because another process went away (killed, crashed, its host lost): a message saying so
    and what to do. None otherwise (also in a single-process run)."""
    if "jax" not in sys.modules or not is_initialized():
        return None
    import jax

    count = jax.process_count()
    if count < 2 or not _PEER_GONE.search(str(err)):
        return None
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"another process of this {count}-process run stopped answering (killed, crashed "
            f"or its host lost), so process {jax.process_index()} stops too. Start all "
            f"{count} commands again with the same --workdir: the run resumes from its last "
            f"saved state. (The collective's error: {first})")


def end_now(code: int) -> NoReturn:
    """Leave the process at once. After another process of the run is gone, JAX's normal
    shutdown would wait for it and then abort with a stack trace; nothing is lost by
    skipping it, since every save of the training state is committed before training goes
    on."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
