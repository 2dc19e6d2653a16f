"""The VTAB sweep on a real machine: no network said at once, Stop while a dataset is being
prepared, every finished task kept in vtab.csv, and the cost of a grid before it starts."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from augreg_nb import cli, sweep, vtab, vtab_run  # noqa: E402
from augreg_nb.config import get_config  # noqa: E402
from augreg_nb.mock_tfds import mock_tfds  # noqa: E402
from tests.test_vtab_run import fake_finished_runs  # noqa: E402
from tests.vtab_children import failing_child, slow_child  # noqa: E402

# ----------------------------------------------------------------------------- the network


def test_network_problem_on_loopback():
    with socket.socket() as server:  # a listening port answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert vtab_run.network_problem("127.0.0.1", server.getsockname()[1]) is None
    with socket.socket() as s:  # a port nobody listens on refuses
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert "refused" in vtab_run.network_problem("127.0.0.1", closed)
    started = time.perf_counter()
    assert "cannot be resolved" in vtab_run.network_problem("augreg-nb-test.invalid")
    assert time.perf_counter() - started < vtab_run.PROBE_TIMEOUT_S + 1


def test_no_network_is_one_message_within_seconds(tmp_path, monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("a run started without network")

    monkeypatch.setattr(sweep, "sweep", no_run)
    monkeypatch.setattr(vtab_run, "PROBE_HOST", "augreg-nb-test.invalid")
    said = []
    started = time.perf_counter()
    with pytest.raises(vtab_run.NoNetwork) as err:
        vtab_run.run_vtab("B/16", tasks=["dtd", "clevr_count"], workdir=tmp_path / "work",
                          overrides=[f"data_dir={tmp_path}"], on_status=said.append)
    assert time.perf_counter() - started < 5
    msg = str(err.value)
    # The wording of notebooks 1, 2 and 4 (augreg_nb.download / sources), then the status.
    assert "augreg-nb-test.invalid cannot be resolved; this machine seems to have no " \
           "network" in msg
    assert "- needs a download: DTD, Clevr-Count" in msg
    assert "HTTPSConnectionPool" not in msg
    assert said == ["checking the datasets of 2 task(s) ..."]
    assert not (tmp_path / "work").exists()


def test_status_summary_says_ready_download_and_manual():
    text = vtab_run.status_summary({"dtd": "prepared", "svhn": "needs download",
                                    "resisc45": "manual download missing",
                                    "retinopathy": "manual files present"})
    assert text.splitlines() == [
        "- ready: DTD", "- ready to prepare (manual files present): Retinopathy",
        "- needs a download: SVHN", "- needs a manual step: Resisc45"]


# ----------------------------------------------------------------------------- Stop


def test_stop_while_preparing_ends_the_child_at_once():
    cleaned = []
    asked = time.perf_counter() + 1.0
    started = time.perf_counter()
    with pytest.raises(vtab_run.VtabStopped, match="stopped while preparing DTD"):
        vtab_run.run_stoppable(slow_child, (60.0,), what="DTD",
                               should_stop=lambda: time.perf_counter() > asked,
                               cleanup=lambda: cleaned.append(1))
    assert time.perf_counter() - started < 15  # the child's start included, not its 60 s
    assert cleaned == [1]


def test_a_failed_preparation_raises_its_reason():
    with pytest.raises(RuntimeError, match="preparing DTD failed: ConnectionError"):
        vtab_run.run_stoppable(failing_child, (), what="DTD", should_stop=lambda: False)
    vtab_run.run_stoppable(slow_child, (0.0,), what="DTD", should_stop=lambda: False)


def test_nothing_half_prepared_is_taken_as_ready(tmp_path):
    from augreg_nb.tasks import get_task, tfds_builder

    task = get_task("vtab/dtd", data_dir=tmp_path)
    version = tfds_builder(task).data_dir
    leftover = tmp_path / "dtd" / "3.0.1.incomplete.ABC123"
    (leftover / "x").mkdir(parents=True)
    assert str(version).startswith(str(tmp_path / "dtd"))
    vtab_run._remove_incomplete("vtab/dtd", str(tmp_path))
    assert not leftover.exists()
    assert vtab_run.dataset_status(["dtd"], data_dir=str(tmp_path)) == {
        "dtd": "needs download"}


def test_stop_while_preparing_in_run_vtab(tmp_path, monkeypatch):
    def slow_prepare(task_name, *, data_dir=None, should_stop=None, on_status=None):
        on_status(f"preparing {task_name}")
        vtab_run.run_stoppable(slow_child, (60.0,), what="DTD", should_stop=should_stop)

    monkeypatch.setattr(vtab_run, "prepare_task", slow_prepare)
    monkeypatch.setattr(vtab_run, "network_problem", lambda: None)
    said, asked = [], []
    result = vtab_run.run_vtab(
        "B/16", tasks=["dtd"], workdir=tmp_path / "work", overrides=[f"data_dir={tmp_path}"],
        on_status=said.append, should_stop=lambda: len(asked) > 5 or asked.append(1))
    assert result.stopped and result.stopped_reason.startswith("stopped while preparing DTD")
    assert said[-1] == "preparing vtab/dtd"
    assert len(result.table) == 0


# ----------------------------------------------------------------------------- vtab.csv


def test_a_later_call_keeps_earlier_tasks_rows(tmp_path):
    rng = np.random.default_rng(0)
    fake_finished_runs(tmp_path / "work", rng)
    with mock_tfds(num_examples=2):
        for tasks in (["svhn"], ["dtd", "clevr_count"], ["dtd"]):
            vtab_run.run_vtab("fake:testing", base=get_config("smoke"), tasks=tasks,
                              workdir=tmp_path / "work", overrides=["resolution=32"])
    rows = vtab_run.read_results(tmp_path / "work")
    assert list(rows["vtab_task"]) == ["dtd", "svhn", "clevr_count"]  # Table 5's order


# ----------------------------------------------------------------------------- cost


def test_grid_cost_is_every_runs_steps_and_evaluation():
    cost = vtab_run.grid_cost(["dtd", "svhn"], variant="full", learning_rates=(0.01, 0.03),
                              lengths=(500, 2500), seconds_per_step=2.0, global_batch=512)
    # Written out: 2 tasks x 2 lrs x (500 + 2500) steps; DTD 1880 val + 1880 test,
    # SVHN 7326 val (the last 10% of 73257) + 26032 test; 4 runs per task.
    assert cost.runs == 8 and cost.train_steps == 12_000
    assert cost.eval_images == 4 * (1880 + 1880) + 4 * (7326 + 26032)
    assert cost.seconds == pytest.approx(12_000 * 2.0 + cost.eval_images * 2.0 / 512 / 3)
    one_k = vtab_run.grid_cost(["dtd"], variant="1k", seconds_per_step=1.0)
    assert one_k.runs == 8 and one_k.eval_images == 8 * (200 + 1880)


def test_measure_step_times_the_real_step():
    config = get_config("smoke")
    config.resolution = 16
    timing = vtab_run.measure_step(config)
    assert timing.model == "testing" and timing.resolution == 16
    import jax

    per_micro_batch = config.global_batch // config.micro_batches
    assert timing.images == (min(per_micro_batch, vtab_run.CPU_IMAGES * jax.device_count())
                             if jax.default_backend() == "cpu" else per_micro_batch)
    assert 0 < timing.seconds < 60
    assert timing.seconds_per_step == pytest.approx(
        timing.seconds * config.global_batch / timing.images)
    text = vtab_run.cost_text(vtab_run.grid_cost(
        vtab.names("natural"), seconds_per_step=timing.seconds_per_step,
        global_batch=config.global_batch), timing)
    assert "7 task(s) x 8 runs = 56 runs, 84,000 training steps" in text
    assert "measured here on" in text


def test_cli_estimate_prints_the_cost_and_runs_nothing(tmp_path, capsys, monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("--estimate ran the sweep")

    monkeypatch.setattr(vtab_run, "run_vtab", no_run)
    code = cli.main(["vtab", "--checkpoint", "fake:testing", "--tasks", "dtd", "--estimate",
                     "--resolution", "16", "--set", "model=testing"])
    assert code == 0
    out = capsys.readouterr().out
    assert "On this machine the chosen grid takes about" in out
    assert "1 task(s) x 8 runs = 8 runs, 12,000 training steps" in out


def test_duration_text():
    from augreg_nb.callbacks import duration_text

    assert duration_text(40) == "40 s"
    assert duration_text(0.25) == "0.25 s"
    assert duration_text(600) == "10 min"
    assert duration_text(5 * 3600 + 20 * 60) == "5 h 20 min"
    assert duration_text(3 * 86400) == "3.0 days"
    assert duration_text(7379.5 * 86400) == "20.2 years"
    assert duration_text(float("nan")) == "unknown time"


def test_download_size_from_the_checksums_tfds_ships():
    # TFDS's checksums for Caltech101 (caltech-101 archive), read offline.
    assert 250e6 < vtab_run.download_size("vtab/caltech101") < 300e6
    assert vtab_run.download_size("vtab/dsprites_location") > 20e6
