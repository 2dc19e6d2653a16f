"""Several processes, one run: the README's loopback commands run as written (two processes
with two virtual CPU devices each, coordinator on 127.0.0.1), compared with one process
with four devices; a process killed mid-run; resuming on another number of devices; the
command-line options of several processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from augreg_nb import distributed
from augreg_nb.cli import main as cli_main
from augreg_nb.digits import load_digits_arrays
from augreg_nb.train_state import read_meta, saved
from tests.conftest import REPO

README_PORT = "8476"  # the port the README's commands use; the tests use a free one
LOOPBACK_DIR, ONE_PROCESS_DIR = "runs/loopback", "runs/one-process"


def readme_commands() -> tuple[dict, list[tuple[dict, list[str]]]]:
    """(exported variables, [(variables of the line, argv)]) of the README's loopback
    block, as a shell would split them."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Several hosts"):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    exported, commands = {}, []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if not words or words == ["wait"]:
            continue
        if words[0] == "export":
            exported.update(w.split("=", 1) for w in words[1:])
            continue
        assigned = {}
        while re.match(r"^[A-Z_]+=", words[0]):
            key, value = words.pop(0).split("=", 1)
            assigned[key] = value
        commands.append((assigned, [w for w in words if w != "&"]))
    return exported, commands


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launcher:
    """Starts the README's commands in ``cwd`` (its relative workdirs land there), with
    ``sys.executable`` for ``python`` and a free port for the README's; logs go to
    ``logs``."""

    def __init__(self, cwd: Path, logs: Path):
        self.cwd, self.logs = cwd, logs
        cwd.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        self.exported, self.commands = readme_commands()

    def start(self, index: int, name: str, *, port: int, extra=(), umask: int = 0o022):
        assigned, words = self.commands[index]
        argv = [sys.executable if w == "python" else w.replace(README_PORT, str(port))
                for w in words] + list(extra)
        env = {**os.environ, **self.exported, **assigned,
               "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        out = open(self.logs / f"{name}.out", "w")  # noqa: SIM115 - closed by the child's end
        err = open(self.logs / f"{name}.err", "w")  # noqa: SIM115
        return subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=out, stderr=err,
                                umask=umask)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.out").read_text() + (self.logs / f"{name}.err").read_text()


def _wait(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def _export(workdir: Path) -> Path:
    found = list(workdir.glob("*.npz"))
    assert len(found) == 1, found
    return found[0]


def _split_sizes() -> tuple[int, int]:
    """val and test sizes of the digits task, from TFDS's percent-slicing rule (rounded
    boundaries) applied to the shipped examples: train[80%:90%] and train[90%:]."""
    n = len(load_digits_arrays()[1])
    return round(n * 0.9) - round(n * 0.8), n - round(n * 0.9)


@pytest.fixture(scope="module")
def loopback_run(tmp_path_factory):
    """The README's loopback commands: two processes (process 1 under umask 077, so its
    files tell themselves apart), then the one-process comparison."""
    root = tmp_path_factory.mktemp("loopback")
    launch = Launcher(root / "cwd", root / "logs")
    assert len(launch.commands) == 3 and launch.exported["JAX_PLATFORMS"] == "cpu"
    port = free_port()
    t0 = time.monotonic()
    procs = [launch.start(0, "p0", port=port), launch.start(1, "p1", port=port, umask=0o077)]
    codes = _wait(procs, 300)
    two = time.monotonic() - t0
    assert codes == [0, 0], launch.log("p0")[-3000:] + launch.log("p1")[-3000:]
    t0 = time.monotonic()
    (code,) = _wait([launch.start(2, "one", port=port)], 300)
    one = time.monotonic() - t0
    assert code == 0, launch.log("one")[-3000:]
    print(f"\nwall time: 2 processes x 2 devices {two:.1f} s, 1 process x 4 devices {one:.1f} s")
    return launch, {"two_processes_s": two, "one_process_s": one}


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one_process_with_four_devices(loopback_run):
    launch, _ = loopback_run
    two, one = launch.cwd / LOOPBACK_DIR, launch.cwd / ONE_PROCESS_DIR
    with np.load(_export(two)) as a, np.load(_export(one)) as b:
        assert sorted(a.files) == sorted(b.files)
        diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
        moved = max(float(np.max(np.abs(a[k]))) for k in a.files)
    print(f"max abs difference of the exported weights: {diff:.3g}")
    # Float rounding (the reduction order across processes), as between 1 and 4 devices.
    assert diff < 2e-3 and moved > 0.1
    val, test = _split_sizes()
    for workdir in (two, one):
        final = json.loads((workdir / "result.json").read_text())["final"]
        assert (final["val_count"], final["test_count"]) == (val, test)
    finals = [json.loads((w / "result.json").read_text())["final"] for w in (two, one)]
    assert finals[0]["val_accuracy"] == pytest.approx(finals[1]["val_accuracy"], abs=0.02)
    # Process 0 alone reports and writes the results, the export, the run's record and its
    # lock; process 1 (umask 077)
    # wrote its shards of the training state and nothing else.
    assert "exported:" in launch.log("p0") and "adapt_final_val" in launch.log("p0")
    out1 = (launch.logs / "p1.out").read_text()
    assert "exported" not in out1 and "adapt_final_val" not in out1
    outside = [p for p in two.rglob("*") if p.is_file() and "state" not in p.parts]
    assert sorted(p.name for p in outside) == sorted(
        [".lock", "run.json", "result.json", _export(two).name])
    assert {p.stat().st_mode & 0o777 for p in outside} == {0o644}
    private = [p for p in (two / "state").rglob("*")
               if p.is_file() and p.stat().st_mode & 0o777 == 0o600]
    assert private and all("process_1" in str(p) for p in private)


@pytest.mark.slow
def test_a_killed_process_ends_the_other_and_both_resume_to_the_same_weights(
        loopback_run, tmp_path):
    done, _ = loopback_run
    launch = Launcher(tmp_path / "cwd", tmp_path / "logs")
    workdir = launch.cwd / LOOPBACK_DIR
    extra = ("--set", "checkpoint_every=5", "--heartbeat-timeout", "10")
    port = free_port()
    procs = [launch.start(0, "p0", port=port, extra=extra),
             launch.start(1, "p1", port=port, extra=extra)]
    deadline = time.monotonic() + 240
    while not (saved(workdir / "state") and read_meta(workdir / "state")["step"] >= 5):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
            launch.log("p0")[-3000:])
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    (code,) = _wait(procs[:1], 90)
    ended = time.monotonic() - t0
    procs[1].wait()
    print(f"\nprocess 0 ended {ended:.1f} s after process 1 was killed")
    assert code != 0 and ended < 45  # the 10 s heartbeat timeout, and time to notice
    # Ours when a collective noticed first (the usual case: it fails at once), else JAX's
    # once the heartbeat timeout ends a process that was not in a collective.
    assert re.search(r"another process of this 2-process run stopped answering .* Start all "
                     r"2 commands again with the same --workdir|another task died",
                     launch.log("p0")), launch.log("p0")[-3000:]
    assert not (workdir / "result.json").exists()
    # The same two commands again: they resume from the last save and finish.
    port = free_port()
    procs = [launch.start(0, "p0-again", port=port, extra=extra),
             launch.start(1, "p1-again", port=port, extra=extra)]
    assert _wait(procs, 300) == [0, 0], launch.log("p0-again")[-3000:]
    assert re.search(r"resuming from step \d+ of 40", launch.log("p0-again"))
    with np.load(_export(workdir)) as a, np.load(_export(done.cwd / LOOPBACK_DIR)) as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


@pytest.mark.slow
def test_a_state_saved_on_four_devices_resumes_on_two(tmp_path):
    from tests.conftest import run_python

    out = run_python(f"""
        import json, jax, numpy as np
        from augreg_nb import input_pipeline as ip
        from tests.test_train_engine import run, small_config, leaves, _StopAt
        mesh4, mesh2 = ip.data_mesh(), ip.data_mesh(jax.devices()[:2])
        config = small_config(total_steps=30, checkpoint_every=10, eval_every=15)
        config.param_sharding = "sharded"
        try:
            run(config, {str(tmp_path / 'cut')!r}, callbacks=[_StopAt(25)], mesh=mesh4)
        except KeyboardInterrupt:
            pass
        resumed = run(config, {str(tmp_path / 'cut')!r}, mesh=mesh2)
        full = run(config, {str(tmp_path / 'full')!r}, mesh=mesh2)
        print(json.dumps({{
            "diff": max(float(np.max(np.abs(a - b)))
                        for a, b in zip(leaves(resumed.params), leaves(full.params))),
            "steps": [int(s) for s in resumed.history.step],
            "full_steps": [int(s) for s in full.history.step],
        }}))
    """, devices=4)
    res = json.loads(out.strip().splitlines()[-1])
    assert res["steps"] == res["full_steps"] and res["steps"][-1] == 30
    assert res["diff"] < 1e-5


@pytest.mark.parametrize("argv,message", [
    (["--coordinator-address", "127.0.0.1:1234"], "missing: num_processes, process_id"),
    (["--num-processes", "2", "--process-id", "0"], "missing: coordinator_address"),
    (["--coordinator-address", "localhost", "--num-processes", "2", "--process-id", "0"],
     "must be HOST:PORT"),
    (["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2", "--process-id",
      "2"], "must be in 0..1"),
])
@pytest.mark.parametrize("command", ["finetune", "sweep"])
def test_incomplete_process_options_are_refused_before_anything_runs(
        command, argv, message, capsys):
    assert cli_main([command, *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "error" in err


def test_a_plain_machine_runs_alone_without_joining_anything(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert distributed.detected_cluster() is None
    assert distributed.initialize() is False and not distributed.is_initialized()
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    assert distributed.detected_cluster() == "JAX_COORDINATOR_ADDRESS"


def test_local_cpu_devices_gives_a_process_virtual_devices():
    from tests.conftest import run_python

    out = run_python("""
        from augreg_nb import distributed
        joined = distributed.initialize(local_cpu_devices=3)
        import jax
        print(joined, jax.device_count(), jax.process_count())
    """, env={"JAX_COORDINATOR_ADDRESS": ""})
    assert out.split()[-3:] == ["False", "3", "1"]


def test_a_collective_that_lost_its_peer_is_explained_and_nothing_else_is(monkeypatch):
    import jax

    gloo = RuntimeError("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/"
                        "pair.cc:538] Read error [127.0.0.1]:17838: Connection reset by peer")
    other = RuntimeError("base_lr must be positive")
    assert distributed.lost_peer(gloo) is None  # one process: nothing to explain
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    message = distributed.lost_peer(gloo)
    assert message.startswith("another process of this 2-process run stopped answering")
    assert "Start all 2 commands again with the same --workdir" in message
    assert message.endswith("(The collective's error: UNKNOWN: Gloo AllGather failed: "
                            "[external/gloo/gloo/transport/tcp/pair.cc:538] Read error "
                            "[127.0.0.1]:17838: Connection reset by peer)")
    assert distributed.lost_peer(other) is None  # an ordinary error stays as it is


def test_the_command_line_leaves_at_once_when_a_peer_is_gone(monkeypatch, capsys):
    from augreg_nb.cli import training

    def fails(args):
        raise RuntimeError("UNAVAILABLE: The following tasks are unhealthy (stopped sending "
                           "heartbeats)")

    class Left(Exception):
        pass

    def end_now(code):
        raise Left(code)

    monkeypatch.setattr(training, "_cmd_finetune", fails)  # the parser binds it when built
    monkeypatch.setattr(distributed, "lost_peer", lambda err: f"lost: {err}")
    monkeypatch.setattr(distributed, "end_now", end_now)
    with pytest.raises(Left) as left:
        cli_main(["finetune", "--preset", "smoke"])
    assert left.value.args == (1,)
    assert "augreg-nb finetune: error: lost: UNAVAILABLE" in capsys.readouterr().err


def test_end_now_flushes_what_was_printed_and_exits_with_the_code():
    code = ("import sys; from augreg_nb import distributed; print('said'); "
            "print('told', file=sys.stderr); distributed.end_now(3)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 3 and proc.stdout == "said\n" and proc.stderr == "told\n"


# ----------------------------------------------------------- processes that never meet


def test_a_coordinator_port_in_use_is_named():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ValueError, match=rf"port {port} of the coordinator address .* "
                           r"already in use.*--process-id 0"):
            distributed.check_port_free(f"127.0.0.1:{port}")
    distributed.check_port_free(f"127.0.0.1:{free_port()}")


def test_join_timeout_messages_name_the_missing_process():
    port = free_port()  # nothing listens there
    text = distributed.join_timeout_message(f"127.0.0.1:{port}", 2, 0, 7)
    assert "process 0 of 2 waited 7 s" in text and "process 1 never joined" in text
    text = distributed.join_timeout_message(f"127.0.0.1:{port}", 4, 0, 7)
    assert "one or more of processes 1 to 3" in text
    text = distributed.join_timeout_message(f"127.0.0.1:{port}", 2, 1, 7)
    assert "nothing answers at" in text and "process 0 (the coordinator)" in text
    assert "--join-timeout" in text


def test_agree_is_nothing_in_a_run_of_one_process():
    distributed.agree("test", {"a": "1"})  # no exchange, no error


def _start(port: int, n: int, pid: int, workdir: Path, *extra: str):
    argv = [sys.executable, "-m", "augreg_nb", "finetune", "--no-progress",
            "--set", "total_steps=4", "--set", "warmup_steps=1", "--set", "eval_every=0",
            "--set", "export=False", "--workdir", str(workdir),
            "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(n),
            "--process-id", str(pid), "--join-timeout", "4", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=workdir.parent)


def _errors(proc) -> tuple[int, list[str]]:
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err, err[-3000:]
    return proc.returncode, lines


# (processes as (num_processes, process_id, extra), the line each must end with)
NEVER_MEET = {
    "peer never starts": ([(2, 0, ())], ["process 0 of 2 waited 4 s .* process 1 never joined"]),
    "no coordinator": ([(2, 1, ())], ["nothing answers at .*process 0 \\(the coordinator\\)"]),
    "num_processes differ": ([(2, 0, ()), (3, 1, ())],
                             ["disagree on num_processes"] * 2),
    "seeds differ": ([(2, 0, ()), (2, 1, ("--set", "seed=7"))],
                     ["disagree on config.seed \\(config.seed: 0 here, 7 there\\)",
                      "disagree on config.seed \\(config.seed: 7 here, 0 there\\)"]),
    "steps differ": ([(2, 0, ()), (2, 1, ("--set", "total_steps=5"))],
                     ["disagree on config.total_steps"] * 2),
    "workdirs differ": ([(2, 0, ()), (2, 1, ("--workdir", "elsewhere"))],
                        ["disagree on workdir"] * 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(NEVER_MEET))
def test_processes_that_never_meet_end_in_one_line(tmp_path, case):
    import re as re_

    procs, expected = NEVER_MEET[case]
    port = free_port()
    started = [_start(port, n, pid, tmp_path / "run", *extra) for n, pid, extra in procs]
    for proc, pattern in zip(started, expected, strict=True):
        code, lines = _errors(proc)
        assert code == 1 and len(lines) == 1 and re_.search(pattern, lines[0]), lines


@pytest.mark.slow
def test_a_second_process_zero_names_the_port(tmp_path):
    port = free_port()
    first = _start(port, 2, 0, tmp_path / "run", "--join-timeout", "30")
    deadline = time.monotonic() + 60
    while not distributed._answers(f"127.0.0.1:{port}"):  # its coordination service is up
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.2)
    code, lines = _errors(_start(port, 2, 0, tmp_path / "run"))
    assert code == 1 and f"port {port} of the coordinator address" in lines[0]
    first.kill()
    first.communicate()
