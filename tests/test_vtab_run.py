"""The VTAB sweep of a checkpoint: task choice, the up-front dataset check, selection by val,
the result rows, their place in Table 5 and Figure 3, and a mock-data run over all 19 tasks."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("tensorflow")

from augreg_nb import cli, sweep, vtab, vtab_run  # noqa: E402
from augreg_nb import config as config_lib  # noqa: E402
from augreg_nb.config import get_config  # noqa: E402
from augreg_nb.index import COLUMNS  # noqa: E402
from augreg_nb.mock_tfds import mock_tfds  # noqa: E402
from augreg_nb.tasks import DatasetNotReadyError, default_manual_dir, get_task  # noqa: E402

#: Table 5's columns per group, written out from the paper (not from augreg_nb.vtab).
PAPER_GROUPS = {
    "natural": ["Caltech101", "CIFAR-100", "DTD", "Flowers102", "Pets", "Sun397", "SVHN"],
    "specialized": ["Camelyon", "EuroSAT", "Resisc45", "Retinopathy"],
    "structured": ["Clevr-Count", "Clevr-Dist", "DMLab", "dSpr-Loc", "dSpr-Ori", "KITTI-Dist",
                   "sNORB-Azim", "sNORB-Elev"],
}
GRID = [(steps, lr) for steps in (500, 2500) for lr in (0.001, 0.003, 0.01, 0.03)]


def put_manual_files(data_dir) -> None:
    """What a user downloads by hand for Resisc45 and Retinopathy, as empty stand-ins."""
    for name in ("resisc45", "retinopathy"):
        task = get_task(f"vtab1k/{name}", data_dir=data_dir)
        folder = default_manual_dir(task)
        for item in task.manual.files:
            path = folder / item
            path.parent.mkdir(parents=True, exist_ok=True)
            if "." in item:
                path.write_text("")
            else:
                path.mkdir(exist_ok=True)


def test_task_choice():
    assert len(vtab_run.select_tasks()) == 19
    for group, columns in PAPER_GROUPS.items():
        names = vtab_run.select_tasks(group=group)
        assert [vtab.SPECS[n].column for n in names] == columns
    # Prefixes are accepted; the order is Table 5's whatever the order given.
    assert vtab_run.select_tasks(["vtab1k/svhn", "dtd", "vtab/clevr_count"]) == (
        "dtd", "svhn", "clevr_count")
    with pytest.raises(ValueError, match="unknown VTAB task 'dtdd'"):
        vtab_run.select_tasks(["dtdd"])
    with pytest.raises(ValueError, match="not both"):
        vtab_run.select_tasks(["dtd"], "natural")
    with pytest.raises(ValueError, match="variant"):
        vtab_run.check_datasets(["dtd"], variant="2k")


def test_manual_downloads_are_reported_before_anything_runs(tmp_path, monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("a run started although a manual download is missing")

    monkeypatch.setattr(sweep, "sweep", no_run)
    work = tmp_path / "work"
    with pytest.raises(vtab_run.ManualDownloadsMissing) as err:
        vtab_run.run_vtab("B/16", workdir=work, overrides=[f"data_dir={tmp_path}"])
    msg = str(err.value)
    assert "2 chosen VTAB task(s) need a manual download" in msg
    for needed in ("- resisc45:", "NWPU-RESISC45", "1drv.ms", "- retinopathy:",
                   "trainLabels.csv", "kaggle.com", str(tmp_path / "downloads" / "manual"),
                   "tfds build resisc45:3.0.0",
                   "tfds build diabetic_retinopathy_detection/btgraham-300:3.0.0"):
        assert needed in msg, needed
    assert not work.exists()
    # Tasks without a manual download pass; so does a group without such tasks.
    status = vtab_run.check_datasets(vtab.names("natural"), data_dir=str(tmp_path),
                                     probe=False)
    assert set(status.values()) == {"needs download"}
    # Not downloading is reported up front too, with each dataset's command.
    with pytest.raises(DatasetNotReadyError) as err:
        vtab_run.check_datasets(["dtd", "svhn"], data_dir=str(tmp_path), prepare=False)
    assert "tfds build dtd:3.0.1" in str(err.value)
    assert "tfds build svhn_cropped:3.1.0" in str(err.value)
    # Once the files are in the manual dir, TFDS can build both.
    put_manual_files(tmp_path)
    status = vtab_run.check_datasets(vtab.names("specialized"), data_dir=str(tmp_path),
                                     probe=False)
    assert status == {"camelyon": "needs download", "eurosat": "needs download",
                      "resisc45": "manual files present", "retinopathy": "manual files present"}


def test_cli_check_lists_the_datasets(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vtab_run, "network_problem", lambda: None)
    code = cli.main(["vtab", "--checkpoint", "B/16", "--group", "specialized", "--check",
                     "--set", f"data_dir={tmp_path}"])
    assert code == 1
    out, err = capsys.readouterr()
    assert "resisc45              needs a manual step" in out
    assert "camelyon              needs a download" in out
    assert "need a manual download" in err
    assert cli.main(["vtab", "--checkpoint", "B/16", "--tasks", "dtd", "--check",
                     "--set", f"data_dir={tmp_path}"]) == 0


def fake_finished_runs(root, rng, resolution=32, base=None) -> dict[str, list[dict]]:
    """Finished runs on disk for every task and grid point, as a fine-tune leaves them
    (run.json recording the config ``base`` gives that point, result.json with an index
    row, a save in state/); returns the rows per task."""
    from augreg_nb import run_folder
    from augreg_nb.sweep import sweep_configs

    if base is None:
        base = get_config("smoke")
        base.checkpoint = "fake:testing"
    written = {}
    for name in vtab.names():
        rows = []
        for steps, lr in GRID:
            point = base.copy_and_resolve_references()
            point.task = f"vtab/{name}"  # run_vtab's default variant, as it configures it
            config_lib.use_task_preprocess(point)
            config, = sweep_configs(point, learning_rates=[lr], lengths=[steps],
                                    resolutions=[resolution])
            workdir = root / name / f"steps_{steps}-lr_{lr}-res_{resolution}"
            workdir.mkdir(parents=True)
            (workdir / run_folder.RUN_FILE).write_text(json.dumps(run_folder.record(config)))
            row = dict.fromkeys(COLUMNS, float("nan"))
            row.update(name="B/16", ds="i21k", filename="B_16-i21k-300ep-lr_0.001-aug_medium1-"
                       "wd_0.1-do_0.0-sd_0.0", adapt_ds=f"vtab/{name}", adapt_lr=lr,
                       adapt_steps=steps, adapt_resolution=resolution,
                       adapt_final_val=int(rng.integers(0, 201)) / 200,
                       adapt_final_test=float(rng.uniform()), adapt_filename=f"{name}-{steps}-{lr}")
            (workdir / "result.json").write_text(json.dumps({"result_row": row}))
            (workdir / "state" / "1").mkdir(parents=True)
            rows.append(row)
        written[name] = rows
    return written


def test_choice_by_val_rows_and_table5(tmp_path):
    rng = np.random.default_rng(3)
    written = fake_finished_runs(tmp_path / "work", rng)
    put_manual_files(tmp_path)
    base = get_config("smoke")
    base.resolution = 32
    seen = []
    with mock_tfds(num_examples=2):  # the datasets read as prepared mocks; nothing trains
        result = vtab_run.run_vtab(
            "fake:testing", base=base, workdir=tmp_path / "work",
            overrides=[f"data_dir={tmp_path}"], on_task=lambda row, runs: seen.append(
                (row["vtab_task"], len(runs))))
    assert seen == [(n, 8) for n in vtab.names()]
    table = result.table
    assert list(table["vtab_task"]) == list(vtab.names())
    assert list(table.columns) == [*COLUMNS, *vtab_run.EXTRA_COLUMNS]
    for _, row in table.iterrows():
        runs = written[row["vtab_task"]]
        vals = [r["adapt_final_val"] for r in runs]
        first_best = runs[vals.index(max(vals))]  # ties: the first run of the grid order
        assert row["adapt_filename"] == first_best["adapt_filename"]
        assert row["adapt_final_test"] == first_best["adapt_final_test"]
        assert row["group"] == vtab.SPECS[row["vtab_task"]].group
    assert len(result.runs) == 19 * 8
    on_disk = vtab_run.read_results(tmp_path / "work")
    assert list(on_disk["adapt_filename"]) == list(table["adapt_filename"])

    from augreg_nb import figures
    from augreg_nb.figures import tidy

    t5 = figures.table5_data(own=on_disk)
    mine = t5[t5["pretrain"] == "Own: ImageNet-21k (300ep)"]
    assert len(t5) - len(mine) == len(figures.table5_data())
    assert (mine["model"] == "B/16").all()
    test = {r["column"]: 100 * r["adapt_final_test"] for _, r in table.iterrows()}
    for group, columns in PAPER_GROUPS.items():
        part = mine[mine["group"] == group].set_index("dataset")["top1"]
        assert list(part.index) == [*columns, f"Mean_{group}"]
        for column in columns:
            assert part[column] == pytest.approx(test[column])
        assert part[f"Mean_{group}"] == pytest.approx(sum(test[c] for c in columns)
                                                      / len(columns))
    html = figures.style_table5(t5).to_html()
    assert "Own: ImageNet-21k (300ep)" in html

    f3 = figures.fig3_data(own=on_disk)
    own3 = f3[f3["ds"] == "own"]
    assert len(own3) == 3
    assert (own3["img_per_sec"] == figures.table3_data().loc["B/16", "img_sec_224"]).all()
    fig = figures.plot_fig3(f3)
    stars = [c for a in fig.axes for c in a.collections if c.get_label() == "own"]
    assert len(stars) == 3

    # A group not complete has no mean; rows of other tasks are left out.
    partial = on_disk[on_disk["vtab_task"] != "svhn"]
    part = tidy.vtab_own_rows(pd.concat([partial, pd.DataFrame([{
        **partial.iloc[0].to_dict(), "adapt_ds": "oxford_iiit_pet"}])]))
    assert "Mean_natural" not in set(part["dataset"])
    assert {"Mean_specialized", "Mean_structured"} <= set(part["dataset"])
    assert len(part) == 18 + 2

    written_files = figures.write_all(tmp_path / "figs", overlay=on_disk)
    assert "finetunes.png" not in written_files  # VTAB rows have no published fine-tunes
    assert "Own: ImageNet-21k (300ep)" in written_files["table5.html"].read_text()


def tiny_base(tmp_path):
    """The VTAB panel's smoke config (fake tiny model, 16 px, batch 4), data under tmp_path."""
    from augreg_nb.widgets.vtab_panel import smoke_base

    return smoke_base(tmp_path)


@pytest.fixture
def quick_compiles():
    """XLA's cheapest compilation: 19 tasks mean 19 head sizes and 57 compilations, which
    dominate a run of two steps of a tiny model (numbers are not compared here)."""
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.mark.slow
def test_mock_vtab_sweep_of_a_tiny_model_over_all_19_tasks(tmp_path, quick_compiles):
    from tests.test_vtab_tasks import realistic

    put_manual_files(tmp_path)
    base = tiny_base(tmp_path)
    start = time.perf_counter()
    with mock_tfds(num_examples=4, seed=5, edit=realistic):
        result = vtab_run.run_vtab(base=base, workdir=tmp_path / "work", learning_rates=[0.01],
                                   lengths=[2])
        seconds = time.perf_counter() - start
        table = result.table
        assert list(table["adapt_ds"]) == [f"vtab/{n}" for n in vtab.names()]
        for column in ("adapt_final_val", "adapt_final_test"):
            # 4 mock examples per split, each evaluated once: accuracies are quarters.
            acc = table[column].to_numpy(dtype=float)
            assert ((acc * 4) == np.round(acc * 4)).all() and (0 <= acc).all()
        assert (table["adapt_steps"] == 2).all() and (table["runs"] == 1).all()
        assert (table["adapt_resolution"] == 16).all()
        # Resumable: a rerun reads every finished run back instead of training it again.
        again = time.perf_counter()
        second = vtab_run.run_vtab(base=base, workdir=tmp_path / "work",
                                   learning_rates=[0.01], lengths=[2])
        assert time.perf_counter() - again < seconds / 3
        pd.testing.assert_frame_equal(second.table, table)
    rows = vtab_run.read_results(tmp_path / "work")
    from augreg_nb.figures import tidy

    means = tidy.vtab_own_rows(rows)
    assert len(means[means["dataset"].str.startswith("Mean_")]) == 3
    print(f"mock VTAB sweep over 19 tasks: {seconds:.1f} s")


def test_stop_between_tasks_keeps_finished_ones(tmp_path):
    rng = np.random.default_rng(0)
    fake_finished_runs(tmp_path / "work", rng)
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 2  # two tasks, then stop

    with mock_tfds(num_examples=2):
        result = vtab_run.run_vtab("fake:testing", base=get_config("smoke"), group="natural",
                                   workdir=tmp_path / "work", overrides=["resolution=32"],
                                   should_stop=should_stop)
    assert result.stopped
    assert list(result.table["vtab_task"]) == ["caltech101", "cifar100"]
    assert len(vtab_run.read_results(tmp_path / "work")) == 2


def test_cli_prints_each_task_and_the_group_means(tmp_path, capsys):
    written = fake_finished_runs(tmp_path / "work", np.random.default_rng(1), resolution=384,
                                 base=vtab_run.base_config("B/16", resolution=384))
    put_manual_files(tmp_path)
    with mock_tfds(num_examples=2):
        code = cli.main(["vtab", "--checkpoint", "B/16", "--group", "specialized",
                         "--workdir", str(tmp_path / "work"), "--set", f"data_dir={tmp_path}",
                         "--no-progress", "--no-estimate"])
    assert code == 0
    out = capsys.readouterr().out
    tests = []
    for name in ("camelyon", "eurosat", "resisc45", "retinopathy"):
        runs = written[name]
        vals = [r["adapt_final_val"] for r in runs]
        best = runs[vals.index(max(vals))]
        tests.append(100 * best["adapt_final_test"])
        assert (f"{name:<22}val {100 * best['adapt_final_val']:5.1f}  test "
                f"{100 * best['adapt_final_test']:5.1f}") in out
    assert f"mean {'specialized':<17}test {sum(tests) / 4:5.1f}" in out
    assert "mean natural" not in out
    assert f"--own {tmp_path / 'work' / 'vtab.csv'}" in out


@pytest.mark.slow
def test_retrain_on_train_and_val_reports_that_runs_test(tmp_path, quick_compiles):
    from tests.test_vtab_tasks import realistic

    base = tiny_base(tmp_path)
    with mock_tfds(num_examples=4, seed=2, edit=realistic):
        result = vtab_run.run_vtab(base=base, tasks=["dtd", "clevr_count"], retrain=True,
                                   workdir=tmp_path / "work", learning_rates=[0.01, 0.03],
                                   lengths=[2])
        for _, row in result.table.iterrows():
            name = row["vtab_task"]
            runs = pd.read_csv(tmp_path / "work" / name / "sweep.csv")
            best = runs.loc[runs["adapt_final_val"].idxmax()]
            assert row["retrained"] and row["runs"] == 2
            assert row["adapt_final_val"] == best["adapt_final_val"]
            assert row["selected_test"] == best["adapt_final_test"]
            again = json.loads((tmp_path / "work" / name / f"retrain-steps_2-lr_"
                                f"{best['adapt_lr']}-res_16" / "result.json").read_text())
            assert row["adapt_final_test"] == again["result_row"]["adapt_final_test"]
            assert row["workdir"].endswith(f"retrain-steps_2-lr_{best['adapt_lr']}-res_16")
            # The retrained run read VTAB's train+val as its training split.
            assert again["result_row"]["adapt_ds"] == f"vtab/{name}+val"
            assert get_task(f"vtab/{name}+val").split("train") == \
                vtab.SPECS[name].splits["trainval"]
