"""The ranking panel driven through its buttons: estimate, start, stop, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from augreg_nb import rank
from augreg_nb.random_checkpoints import write_fake_checkpoint
from augreg_nb.widgets.rank_panel import RankPanel, shown_summary, winner_html


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel") / "shapes"
    rng = np.random.default_rng(1)
    for k, name in enumerate(("dark", "light", "mid")):
        (root / name).mkdir(parents=True)
        for i in range(15):
            img = np.clip(40 + 80 * k + rng.normal(0, 20, (16, 16, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.png")
    d = tmp_path_factory.mktemp("panel-ckpts")
    files = [str(write_fake_checkpoint(d / f"m{s}.npz", "testing", num_classes=10,
                                       resolution=32, seed=s)) for s in (3, 4)]
    return str(root), files


def test_estimate_then_rank_shows_table_winner_and_plot(setup):
    folder, files = setup
    panel = RankPanel(None, task=folder, checkpoints=files, shots=(1, 5), seeds=2,
                      resolution=32, batch_size=8)
    assert panel.checkpoints == files and panel.more.value == ", ".join(files)
    panel.estimate_button.click()
    assert panel.running and not panel.stop_button.disabled  # in the background
    panel.wait()
    assert panel.messages.kind is None, panel.messages.text
    assert "Cost here" in panel.plan_html.value and "per batch of 8" in panel.plan_html.value
    panel.start_button.click()
    panel.wait()
    assert panel.messages.kind == "info" and "ranked 2 candidate(s)" in panel.messages.text
    assert panel.winner in files
    assert f'CHECKPOINT = &quot;{panel.winner}&quot;' in panel.winner_box.value
    assert panel.table.value.count("<tr") == 3  # header + 2 candidates
    assert len(panel.figure.value) > 1000  # the PNG of the plot
    assert panel.overall_bar.value == 2 and panel.overall_bar.bar_style == "success"
    assert not panel.running and not panel.start_button.disabled
    summary = shown_summary(panel.result)
    assert list(summary.columns) == ["candidate", "1-shot %", "5-shot %", "img/s (Table 3)",
                                     "paper's pick"]
    assert "Winner" in winner_html(panel.result)


def test_stop_ends_the_ranking_and_says_so(setup):
    folder, files = setup
    panel = RankPanel(None, task=folder, checkpoints=files, shots=(1,), seeds=1,
                      resolution=32, batch_size=4)
    progress = panel._progress

    def stop_at_first_candidate(p):
        progress(p)
        if p.phase == "features" and p.done == 0:
            panel.stop()

    panel._progress = stop_at_first_candidate
    panel.start_button.click()
    panel.wait()
    assert panel.result.stopped
    assert panel.messages.kind == "warning" and "Start continues" in panel.messages.text
    assert panel.candidate_bar.bar_style == "warning" and not panel.running


def test_stop_ends_an_estimate(setup):
    folder, files = setup
    panel = RankPanel(None, task=folder, checkpoints=files, resolution=32, batch_size=4)
    panel.estimate_button.click()
    panel.stop()
    panel.wait()
    assert panel.messages.kind == "warning" and "stopped" in panel.messages.text
    assert not panel.running and not panel.estimate_button.disabled


def test_errors_are_shown_not_raised(setup):
    _, files = setup
    panel = RankPanel(None, task="no/such/folder", checkpoints=files)
    panel.start_button.click()
    panel.wait()
    assert panel.messages.kind == "error" and "neither a known task" in panel.messages.text
    assert not panel.running and not panel.start_button.disabled
    empty = RankPanel(None, task="digits")
    empty.estimate_button.click()
    assert "at least one candidate" in empty.messages.text
    empty.plot()
    assert empty.result is None


def test_smoke_panel_offers_the_fakes_on_digits():
    panel = RankPanel(None, smoke=True, task="ignored", checkpoints=["B/16"])
    assert panel.checkpoints == list(rank.SMOKE_CHECKPOINTS)
    assert panel.task.value == "digits" and panel.resolution.value == 32
    assert "Smoke data" in panel.smoke_notice.value


def test_a_candidate_that_fails_is_reported_and_the_others_ranked(setup, tmp_path):
    folder, files = setup
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a checkpoint")
    panel = RankPanel(None, task=folder, checkpoints=[files[0], str(broken)], shots=(1,),
                      seeds=1, resolution=32, batch_size=8)
    panel.start_button.click()
    panel.wait()
    assert panel.messages.kind == "warning", panel.messages.text
    assert "ranked 1 of 2" in panel.messages.text and "broken.npz" in panel.messages.text
    assert panel.winner == files[0] and list(panel.result.failed) == ["broken.npz"]
    only_broken = RankPanel(None, task=folder, checkpoints=[str(broken)], shots=(1,))
    only_broken.start_button.click()
    only_broken.wait()
    assert only_broken.messages.kind == "error" and only_broken.winner is None


def test_real_mode_chooses_the_recommended_checkpoints_of_table3():
    from augreg_nb.index import load_index

    df = load_index("catalogue")
    panel = RankPanel(df, task="oxford_iiit_pet")
    assert panel.checkpoints == rank.default_checkpoints(df)
    assert len(panel.checkpoints) == 9 and not any(c.startswith("B_8") for c in
                                                   panel.checkpoints)
    assert len(panel.candidates.options) > 9  # every upstream row of the table is offered
    named = RankPanel(df, checkpoints="B/8, my.npz")
    assert named.more.value == "B/8, my.npz" and named.checkpoints == ["B/8", "my.npz"]


def test_bf16_box_extracts_with_bfloat16_matmuls(setup, monkeypatch):
    folder, files = setup
    seen = {}
    real_rank, real_estimate = rank.rank, rank.estimate_cost

    def spy_rank(*args, **kwargs):
        seen["rank"] = kwargs.get("matmul_dtype")
        return real_rank(*args, **kwargs)

    def spy_estimate(*args, **kwargs):
        seen["estimate"] = kwargs.get("matmul_dtype")
        return real_estimate(*args, **kwargs)

    monkeypatch.setattr(rank, "rank", spy_rank)
    monkeypatch.setattr(rank, "estimate_cost", spy_estimate)
    panel = RankPanel(None, task=folder, checkpoints=files[:1], shots=(1,), seeds=1,
                      resolution=32, batch_size=8, bf16_matmuls=True)
    assert panel.bf16.value and panel.bf16 in panel.widget.children
    panel.estimate_button.click()
    panel.wait()
    panel.start_button.click()
    panel.wait()
    assert panel.messages.kind == "info", panel.messages.text
    assert seen == {"rank": "bfloat16", "estimate": "bfloat16"}
    panel.bf16.value = False
    assert panel._kwargs()["matmul_dtype"] is None
