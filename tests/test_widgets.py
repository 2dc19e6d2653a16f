"""The notebooks' panels driven without a browser: set values, press buttons, read results."""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import pytest

from augreg_nb import index as index_lib
from augreg_nb import names
from augreg_nb.loopback import FakeBucket, FakeHub
from augreg_nb.resources import data_path
from augreg_nb.testing.checkpoints import write_fake_checkpoint
from augreg_nb.widgets import FigurePicker, FinetunePanel, IndexBrowser, InferencePanel
from augreg_nb.widgets import figure_picker as fp
from augreg_nb.widgets import finetune_panel as ftp
from augreg_nb.widgets import index_browser as ib
from augreg_nb.widgets import inference_panel as ip
from augreg_nb.widgets.common import ANY, MessageArea, describe_error, guarded

TI16_UP = "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
TI16_FT = f"{TI16_UP}--imagenet2012-steps_20k-lr_0.03-res_384"


@pytest.fixture(scope="module")
def catalogue() -> pd.DataFrame:
    return index_lib.load_index("catalogue")


@pytest.fixture(scope="module")
def raw_rows() -> pd.DataFrame:
    """The shipped catalogue read as plain CSV (the independent view of the same rows)."""
    return pd.read_csv(data_path("catalog", "augreg_catalogue.csv"))


@pytest.fixture
def sources_env(tmp_path, monkeypatch):
    """A loopback bucket and Hub, an empty cache, no credentials, online."""
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    for var in ("AUGREG_NB_OFFLINE", "AUGREG_NB_CHECKPOINT_DIR", "AUGREG_NB_INDEX"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "bucket"
    folder.mkdir()
    with FakeBucket(folder) as bucket, FakeHub() as hub:
        monkeypatch.setenv("AUGREG_NB_BUCKET_URL", bucket.url)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield bucket


# --------------------------------------------------------------------------- common


def test_guarded_handlers_show_a_message_not_a_traceback():
    area = MessageArea()

    @guarded(area, "Doing it")
    def fails():
        raise ValueError("the file x is missing; put it in y")

    assert fails() is None
    assert area.kind == "error"
    assert "the file x is missing; put it in y" in area.widget.value
    assert "Doing it failed" in area.widget.value
    assert "Traceback" not in area.widget.value
    assert describe_error(KeyError("k")) == "missing key 'k'"
    assert describe_error(TypeError("bad")) == "TypeError: bad"
    area.show("<b>not markup</b>")
    assert "&lt;b&gt;not markup&lt;/b&gt;" in area.widget.value


# --------------------------------------------------------------------------- index browser


def _mirrored_names() -> set[str]:
    """Files timm re-hosts on the Hugging Face Hub, read from the shipped mirror list."""
    mirror = pd.read_csv(data_path("mirror", "timm_augreg_checkpoints.csv"))
    mirror = mirror.dropna(subset=["upstream_filename"])
    full = mirror["upstream_filename"].where(
        mirror["adapt_suffix"].isna(), mirror["upstream_filename"] + "--" + mirror["adapt_suffix"])
    return set(full)


def test_filter_options_show_paper_aug_names_and_keep_index_values(catalogue, raw_rows):
    opts = ib.filter_options(catalogue)
    aug = dict((v, lbl) for lbl, v in opts["aug"])
    assert aug[ANY] == ANY
    assert aug["light0"] == "light1 (index: light0)"
    assert aug["light1"] == "light2 (index: light1)"
    assert aug["none"] == "none"
    assert set(aug) - {ANY} == set(raw_rows["aug"])
    models = [v for _, v in opts["model"]][1:]
    assert set(models) == set(raw_rows["name"])
    assert [lbl for lbl, _ in opts["reg"]][1:] == ["none", "dropout 0.1, stoch. depth 0.1"]
    assert [v for _, v in opts["resolution"]][1:] == [224, 384]


def test_browse_filters_and_sorts_like_pandas(catalogue, raw_rows):
    view = ib.browse(catalogue, {"model": "R26+S/32", "aug": "light1", "task": "oxford_iiit_pet"},
                     sort_by="fine-tuned test accuracy", limit=100)
    want = raw_rows[(raw_rows["name"] == "R26+S/32") & (raw_rows["aug"] == "light1")
                    & (raw_rows["adapt_ds"] == "oxford_iiit_pet")]
    want = want.sort_values("adapt_final_test", ascending=False, na_position="last",
                            kind="stable")
    assert view.matching == len(want) > 1
    assert view.files == want["adapt_filename"].tolist()
    assert view.table["test acc"].tolist() == pytest.approx(want["adapt_final_test"].tolist(),
                                                            nan_ok=True)
    assert set(view.table["aug (paper)"]) == {"light2"}
    # The paper's name under aug_paper selects the same rows.
    same = ib.browse(catalogue, {"model": "R26+S/32", "aug_paper": "light2",
                                 "task": "oxford_iiit_pet"}, sort_by="fine-tuned test accuracy",
                     limit=100)
    assert same.files == view.files


def test_browse_regularisation_lr_steps_and_upstream_view(catalogue, raw_rows):
    view = ib.browse(catalogue, {"reg": "do=0.1, sd=0.1", "lr": 0.01, "steps": 20000},
                     limit=500)
    want = raw_rows[(raw_rows["do"] == 0.1) & (raw_rows["sd"] == 0.1)
                    & (raw_rows["adapt_lr"] == 0.01) & (raw_rows["adapt_steps"] == 20000)]
    assert sorted(view.files) == sorted(want["adapt_filename"])
    up = ib.browse(catalogue, {"model": "R26+S/32"}, view="upstream checkpoints", limit=500)
    want_up = raw_rows[raw_rows["name"] == "R26+S/32"]
    assert sorted(up.files) == sorted(want_up["filename"].unique())
    counts = want_up.groupby("filename").size()
    assert up.table["fine-tunes listed"].tolist() == [counts[f] for f in up.files]
    with pytest.raises(ValueError, match="do=0.1, sd=0.1"):
        ib.criteria_from_state({"reg": "lots"})
    with pytest.raises(ValueError, match="unknown filter"):
        ib.criteria_from_state({"modle": "B/16"})


def test_recommended_checkpoints_are_marked(catalogue):
    # The authors' published pick per model (their notebook's output), shipped as data.
    picks = pd.read_csv(data_path("index",
                                  "vit_jax_augreg_nb_cell21_best_i21k_per_model_imagenet2012.csv"))
    expected = set(picks["filename"])
    assert len(expected) == 10
    view = ib.browse(catalogue, {}, view="upstream checkpoints", limit=1000)
    marked = {f for f, m in zip(view.files, view.marked, strict=True) if m}
    assert expected <= set(view.files)  # the catalogue lists every recommended checkpoint
    assert marked == expected  # each is marked, and nothing else
    assert all(view.table["rec."][i] == ("★" if m else "") for i, m in enumerate(view.marked))
    # "★" means one thing; the fine-tunes of a recommended checkpoint carry another mark.
    ft = ib.browse(catalogue, {}, limit=1000)
    assert "★" not in set(ft.table["rec."])
    want = [up in expected for up in ft.upstreams]
    assert ft.table["rec."].tolist() == ["☆" if m else "" for m in want]
    assert any(want)


def test_browser_widget_follows_filters_and_shows_provenance(catalogue, raw_rows, real_env):
    browser = IndexBrowser(catalogue, limit=5)
    browser.fetchable_only.value = False  # every row, fetchable now or not
    assert "shipped offline catalogue" in browser.provenance.value
    assert "incomplete" in browser.provenance.value
    assert len(browser.table) == 5
    assert f"of {len(raw_rows)} rows" in browser.count.value
    browser.filters["model"].value = "S/32"
    assert set(browser.table["model"]) == {"S/32"}
    n_s32 = int((raw_rows["name"] == "S/32").sum())
    assert f"<b>{n_s32}</b> of {len(raw_rows)}" in browser.count.value
    browser.filters["aug"].value = "light0"
    assert set(browser.table["aug (paper)"]) == {"light1"}
    assert browser.selected == browser.table["checkpoint"].iloc[0]
    assert browser.selected in browser.table_html.value.replace("<wbr>", "")
    browser.sort.value = "fine-tuned val accuracy"
    browser.descending.value = False
    vals = browser.table["val acc"].dropna().tolist()
    assert vals == sorted(vals)
    browser.filters["task"].value = "oxford_iiit_pet"  # the catalogue has none of S/32
    assert browser.table.empty
    assert "No checkpoint matches" in browser.table_html.value
    browser.view_toggle.value = "upstream checkpoints"
    assert browser.sort.value in ib.UPSTREAM_SORTS
    assert browser.kind.disabled


def test_fetch_button_downloads_only_when_pressed(sources_env, tmp_path, catalogue):
    bucket = sources_env
    # Tiny stand-in bytes in the published .npz format under the real names.
    write_fake_checkpoint(bucket.root / f"{TI16_FT}.npz", "testing", num_classes=10,
                          resolution=32)
    browser = IndexBrowser(catalogue, state={"model": "Ti/16", "task": "imagenet2012",
                                             "resolution": 384})
    browser.filters["wd"].value = 0.03
    assert bucket.requests == []  # building and filtering never downloads
    assert browser.selected == TI16_FT
    assert browser.table["available"].iloc[0] == "bucket"  # the loopback bucket serves it
    browser.fetch_button.click()
    assert browser.messages.kind == "info", browser.messages.text
    cached = tmp_path / "cache" / "checkpoints" / f"{TI16_FT}.npz"
    assert cached.is_file()
    assert str(cached) in browser.messages.text
    assert browser.last_fetch.source == "bucket-https"
    assert [r.path for r in bucket.requests if r.method == "GET"] == [f"/{TI16_FT}.npz"]
    assert browser.table["available"].iloc[0] == "cached"
    assert not browser.fetch_button.disabled


def test_refused_fetch_is_a_readable_message(sources_env, catalogue):
    bucket = sources_env
    bucket.set(f"{TI16_UP}.npz", status=403)
    browser = IndexBrowser(catalogue, state={"model": "Ti/16", "task": "imagenet2012",
                                             "resolution": 384})
    browser.kind.value = "upstream"
    browser.fetch_button.click()
    assert browser.messages.kind == "error"
    text = browser.messages.text
    assert "refused anonymous" in text and "Sources tried" in text
    assert "Traceback" not in text
    assert not browser.fetch_button.disabled


# --------------------------------------------------------------------------- fine-tuning


def test_make_config_uses_the_paper_recipe():
    c = ftp.make_config(checkpoint=TI16_UP, task="oxford_iiit_pet", resolution=224, lr=0.003,
                        steps=500, micro_batches=16, workdir="runs")
    # Table 4 of the paper: 500 steps -> 100 warm-up; batch 512 throughout.
    assert (c.total_steps, c.warmup_steps, c.global_batch) == (500, 100, 512)
    assert (c.base_lr, c.resolution, c.micro_batches, c.task) == (0.003, 224, 16,
                                                                   "oxford_iiit_pet")
    assert c.checkpoint == TI16_UP and c.model is None
    assert c.workdir == f"runs/{TI16_UP}--oxford_iiit_pet-steps_500-lr_0.003-res_224-seed_0"
    long = ftp.make_config(checkpoint=TI16_UP, task="cifar100", resolution=384, lr=0.01,
                           steps=10000)
    assert long.warmup_steps == 500
    assert ftp.steps_choices("cifar100") == [2500, 10000]
    assert ftp.steps_choices("imagenet2012") == [20000]
    smoke = ftp.make_config(checkpoint=ftp.SMOKE_CHECKPOINT, task="digits", resolution=32,
                            lr=0.03, steps=20)
    assert (smoke.model, smoke.task, smoke.total_steps, smoke.global_batch) == (
        "testing", "digits", 20, 64)


def test_published_result_and_comparison(catalogue, raw_rows):
    row = raw_rows.dropna(subset=["adapt_final_test"]).iloc[0]
    config = ftp.make_config(checkpoint=row["filename"], task=row["adapt_ds"],
                             resolution=int(row["adapt_resolution"]), lr=row["adapt_lr"],
                             steps=int(row["adapt_steps"]))
    pub = ftp.published_result(catalogue, config)
    assert pub["adapt_filename"] == row["adapt_filename"]
    assert pub["adapt_final_test"] == pytest.approx(row["adapt_final_test"])
    own = {"adapt_final_test": row["adapt_final_test"] - 0.0123, "adapt_final_val": 0.5}
    text = ftp.comparison_text(own, pub)
    assert f"{-1.23:+.2f} points" in text
    assert f"{row['adapt_final_test']:.2%}" in text
    other = ftp.make_config(checkpoint=ftp.SMOKE_CHECKPOINT, task="digits", resolution=32,
                            lr=0.03, steps=20)
    assert ftp.published_result(catalogue, other) is None
    assert "No published number" in ftp.comparison_text(own, None)


def test_export_result_row_appends_and_replaces(tmp_path):
    path = tmp_path / "own.csv"
    a = {"name": "B/16", "adapt_filename": "a", "adapt_final_test": 0.5}
    b = {"name": "S/16", "adapt_filename": "b", "adapt_final_test": 0.6}
    ftp.export_result_row(a, path)
    ftp.export_result_row(b, path)
    ftp.export_result_row({**a, "adapt_final_test": 0.7}, path)
    rows = ftp.read_results(path)
    assert list(rows.columns) == list(index_lib.COLUMNS)
    assert rows.set_index("adapt_filename")["adapt_final_test"].to_dict() == {"b": 0.6, "a": 0.7}
    assert ftp.read_results(tmp_path / "missing.csv").empty


def test_panel_does_nothing_until_start_and_reports_errors(tmp_path, monkeypatch, catalogue):
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AUGREG_NB_CHECKPOINT_DIR", raising=False)
    smoke = FinetunePanel(catalogue, workdir=tmp_path / "runs", smoke=True,
                          results_csv=tmp_path / "own.csv")
    assert smoke.checkpoint.value == ftp.SMOKE_CHECKPOINT
    assert (smoke.task.value, smoke.steps.value) == ("digits", ftp.default_steps("digits"))
    # Smoke mode offers only what runs offline.
    assert [v for _, v in smoke.checkpoint.options] == [ftp.SMOKE_CHECKPOINT]
    assert list(smoke.task.options) == ["digits"]
    panel = FinetunePanel(catalogue, workdir=tmp_path / "runs",
                          results_csv=tmp_path / "own.csv", checkpoint=TI16_UP)
    assert "digits" not in panel.task.options
    panel.task.value = "oxford_iiit_pet"
    assert list(panel.steps.options) == [500, 2500]
    assert list(panel.resolution.options) == [224, 384]
    assert not (tmp_path / "runs").exists()  # nothing ran
    panel.export_button.click()  # disabled in a browser; from code it explains itself
    panel.start_button.click()
    panel.wait(60)
    assert panel.messages.kind == "error"
    assert "offline" in panel.messages.text.lower() and "Traceback" not in panel.messages.text
    assert panel.result is None and not panel.start_button.disabled


def test_panel_runs_the_smoke_preset_with_live_plot_and_exports(tmp_path, monkeypatch,
                                                                catalogue):
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    panel = FinetunePanel(catalogue, workdir=tmp_path / "runs", smoke=True,
                          results_csv=tmp_path / "own.csv", steps=20)
    panel.start_button.click()
    panel.wait(120)
    assert panel.messages.kind == "info", panel.messages.text
    assert panel.bar.value == panel.bar.max == 20 and panel.bar.bar_style == "success"
    assert panel.bar_label.value.startswith("done: 20 steps · last loss ")
    assert panel.plot.value[:4] == b"\x89PNG"
    result = panel.result
    hist = result.history
    assert hist["step"].max() == 20 and hist["val_accuracy"].notna().any()
    assert panel.figure is not None and len(panel.figure.axes) == 2
    loss_line = panel.figure.axes[0].lines[0]
    logged = hist.dropna(subset=["loss"])
    np.testing.assert_allclose(loss_line.get_ydata(), logged["loss"].to_numpy())
    assert f"{result.result_row['adapt_final_test']:.2%}" in panel.summary.value
    assert "No published number" in panel.summary.value
    assert not panel.export_button.disabled
    panel.export_button.click()
    rows = ftp.read_results(tmp_path / "own.csv")
    assert rows["adapt_filename"].tolist() == [result.result_row["adapt_filename"]]
    assert result.export_path.is_file() and str(result.export_path) in panel.messages.text


def test_stop_saves_the_run_and_start_resumes_it(tmp_path, monkeypatch, catalogue):
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    panel = FinetunePanel(catalogue, workdir=tmp_path / "runs", smoke=True,
                          results_csv=tmp_path / "own.csv", steps=20)
    assert panel.stop_button.disabled  # nothing to stop yet
    panel.start_button.click()
    assert panel.running and not panel.stop_button.disabled
    assert panel.start_button.disabled
    panel.stop_button.click()  # before the first step is done: it ends after step 1
    panel.wait(120)
    assert panel.messages.kind == "warning", panel.messages.text
    assert panel.messages.text.startswith("stopped at step 1 of 20; Start resumes")
    assert panel.stopped.state_path.is_dir() and panel.result is None
    assert panel.export_button.disabled and not panel.start_button.disabled
    # Library chatter of the run stays out of the notebook, in a collapsed details block.
    assert "Traceback" not in panel.library_output
    seen = []
    panel.plot.observe(lambda change: seen.append(panel.figure.axes[0].lines[0].get_xdata()
                                                  if panel.figure.axes[0].lines else []),
                       names="value")
    panel.start_button.click()
    panel.wait(120)
    assert panel.messages.kind == "info", panel.messages.text
    hist = panel.result.history
    assert hist["step"].max() == 20 and hist["step"].min() <= 10  # one history, both parts
    # The resumed run's first drawing already holds the steps logged before the stop.
    before = hist[hist["step"] <= 1].dropna(subset=["loss"])["step"].tolist()
    assert before == [1] and list(seen[0]) == before


def test_start_on_a_finished_run_shows_it_and_another_run_clears_it(tmp_path, monkeypatch,
                                                                     catalogue):
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    panel = FinetunePanel(catalogue, workdir=tmp_path / "runs", smoke=True,
                          results_csv=tmp_path / "own.csv", steps=20)
    panel.start_button.click()
    panel.wait(120)
    first = panel.result.history
    logged = first.dropna(subset=["loss"])
    # A new panel (a new session) on the same run: Start trains nothing and shows it all.
    again = FinetunePanel(catalogue, workdir=tmp_path / "runs", smoke=True,
                          results_csv=tmp_path / "own.csv", steps=20)
    again.start_button.click()
    again.wait(120)
    assert again.messages.kind == "info", again.messages.text
    loss_line = again.figure.axes[0].lines[0]
    np.testing.assert_allclose(loss_line.get_ydata(), logged["loss"].to_numpy())
    acc = again.figure.axes[1]
    assert [line.get_label() for line in acc.lines] == ["val", "test"]  # legend order
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["val", "test"]
    # The last evaluation (at the last step) lies inside the axes, not on the clipped edge.
    assert acc.get_xlim()[1] > 20
    assert "Your run: test accuracy" in again.summary.value
    # Another configuration: the previous curves and result go before it starts.
    shown_before = again.plot.value
    again.steps.value = 100
    again.start_button.click()
    assert again.summary.value == "" and again.result is None  # cleared at once
    assert again.export_button.disabled
    again.stop_button.click()
    again.wait(120)
    assert again.messages.kind == "warning" and "stopped at step 1 of 100" in again.messages.text
    assert again.plot.value != shown_before  # the new run's (empty) curves, not the old ones


def test_duration_text():
    from augreg_nb.callbacks import duration_text

    assert duration_text(42) == "42 s"
    assert duration_text(20 * 60) == "20 min"
    assert duration_text(3 * 3600 + 20 * 60) == "3 h 20 min"
    assert duration_text(3 * 86400) == "3.0 days"


# --------------------------------------------------------------------------- figures


def test_render_paper_figures_and_highlight():
    shown = fp.render("fig4", source="paper", highlight=["B/16"])
    assert shown.figure is not None and shown.figure.axes
    assert "Figure 4" in shown.caption
    table = fp.render("table3", highlight="B/16")
    assert "<table" in table.html and "#fff3b0" in table.html  # the highlighted row
    with pytest.raises(ValueError, match="full index"):
        fp.render("fig1", source="paper")
    with pytest.raises(ValueError, match="no own results"):
        fp.render("own")


def test_render_from_an_index_and_overlay_own_results():
    from augreg_nb.figures.synthetic import paper_index

    index = paper_index().copy()
    comparison = fp.render("comparison", index=index)
    assert "<table" in comparison.html and "differ" in comparison.caption
    own = pd.DataFrame([{
        "name": "B/16", "ds": "i21k", "adapt_ds": "imagenet2012", "adapt_resolution": 384,
        "adapt_final_val": 0.9, "adapt_final_test": 0.8512, "infer_samples_per_sec": 138.0,
        "adapt_filename": "mine",
    }])
    fig6 = fp.render("fig6", source="index", index=index, own=own)
    assert "1 own ImageNet" in fig6.note
    stars = [c for ax in fig6.figure.axes for c in ax.collections
             if len(c.get_offsets()) == 1
             and np.allclose(np.asarray(c.get_offsets())[0], [138.0, 85.12])]
    assert stars, "own result not drawn at (its speed, its accuracy in %)"
    catalogue = index_lib.load_index("catalogue")
    with pytest.raises(ValueError, match="shipped catalogue"):
        fp.render("fig4", source="index", index=catalogue)


def test_picker_widget_redraws_and_explains(tmp_path):
    own_csv = tmp_path / "own.csv"
    picker = FigurePicker(None, results_csv=own_csv, item="fig7", highlight="L/16, B/16")
    assert set(picker.highlight.value) == {"B/16", "L/16"}
    assert picker.shown.item == "fig7" and picker.messages.kind is None
    picker.item.value = "fig1"
    assert picker.shown is None and picker.messages.kind == "error"
    assert "AUGREG_NB_INDEX" in picker.messages.text
    picker.item.value = "own"
    assert "notebook 2" in picker.messages.text
    ftp.export_result_row({"name": "testing", "adapt_ds": "digits", "adapt_resolution": 32,
                           "adapt_final_val": 0.3, "adapt_final_test": 0.25,
                           "adapt_filename": "fake--digits"}, own_csv)
    picker.reload_button.click()
    assert picker.shown.item == "own" and "no published counterpart" in picker.shown.note
    assert "1 own result row(s) read from" in picker.own_status.value
    picker.item.value = "table5"
    assert "<table" in picker.shown.html


def test_comparison_offers_only_differences_in_a_bounded_view_and_says_what_data_it_is():
    from types import SimpleNamespace

    from augreg_nb import figures

    session = SimpleNamespace(index=None, smoke=True, results_csv=None)
    picker = FigurePicker.for_session(session, item="comparison", source="index")
    assert picker.messages.kind is None, picker.messages.text
    # Smoke mode's "full index" is built from the paper's own numbers: the screen says so.
    assert fp.SYNTHETIC_NOTE in picker.caption.value.replace("&#x27;", "'")
    table = figures.compare_with_paper(picker.index)
    differ = int(table["differs"].sum())
    assert picker.only_differences.value
    html_rows = picker.shown.html.count("<tr") - 1  # the header row
    assert html_rows == max(differ, 0) and html_rows < len(table)
    assert "max-height" in picker.shown.html and "overflow:auto" in picker.shown.html
    picker.only_differences.value = False
    assert picker.shown.html.count("<tr") - 1 == len(table)
    picker.item.value = "fig4"
    assert fp.SYNTHETIC_NOTE in picker.caption.value.replace("&#x27;", "'")
    # Figures from the paper's printed tables carry no such note.
    picker.source.value = "paper"
    assert fp.SYNTHETIC_NOTE not in picker.caption.value.replace("&#x27;", "'")


# --------------------------------------------------------------------------- inference


def test_sample_photographs_and_uploaded_images():
    from PIL import Image

    samples = ip.sample_images()
    assert list(samples) == ["cat", "coffee cup", "rocket launch"]
    for name, img in samples.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert min(img.shape[:2]) >= 224, name  # real photographs, big enough to classify
        assert img.std() > 20, name  # not a flat placeholder
        shipped = data_path("samples", ip.SAMPLE_PHOTOS[name])
        assert shipped.stat().st_size <= 60_000
        np.testing.assert_array_equal(np.asarray(Image.open(shipped).convert("RGB")), img)
    small = ip.sample_images(64)
    assert all(min(img.shape[:2]) == 64 for img in small.values())
    buf = io.BytesIO()
    Image.fromarray(small["cat"]).save(buf, format="PNG")
    got = ip.uploaded_images(({"name": "a.png", "content": memoryview(buf.getvalue())},))
    np.testing.assert_array_equal(np.asarray(got["a.png"]), small["cat"])
    with pytest.raises(ValueError, match="b.jpg is not an image"):
        ip.uploaded_images([{"name": "b.jpg", "content": b"not an image"}])


def test_probability_axis_scales_to_the_largest_bar():
    from augreg_nb.inference import Prediction

    images = ip.sample_images(32)
    low = [[Prediction(i, f"class {i}", p) for i, p in enumerate([0.012, 0.008, 0.005])]
           for _ in images]
    fig = ip.plot_predictions(images, low)
    assert fig.axes[1].get_xlim() == pytest.approx((0, 1.5))  # 1.2 % fills most of the axis
    assert ip.probability_axis_limit([90.0, 5.0]) == 100.0
    assert ip.probability_axis_limit([0.1]) == 1.0
    # Every label of the chart is at least 9 pt.
    texts = [t for ax in fig.axes for t in (*ax.texts, *ax.get_yticklabels(),
                                             *ax.get_xticklabels(), ax.xaxis.label)
             if t.get_text()]
    assert texts and min(t.get_fontsize() for t in texts) >= 9


def test_plot_predictions_draws_the_probabilities():
    from augreg_nb.inference import Prediction

    images = ip.sample_images(32)
    preds = [[Prediction(i, f"class name {i}" if i % 2 else None, p)
              for i, p in enumerate([0.5, 0.2, 0.1])] for _ in images]
    fig = ip.plot_predictions(images, preds)
    assert len(fig.axes) == 2 * len(images)
    bars = fig.axes[1].patches
    assert [b.get_width() for b in bars] == pytest.approx([50, 20, 10])
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert labels == ["class 0", "class name 1", "class 2"]


def test_inference_panel_loads_and_classifies(tmp_path):
    from augreg_nb.checkpoint import load
    from augreg_nb.models import create_model
    from augreg_nb.preprocess import prepare_images

    path = write_fake_checkpoint(tmp_path / "fake.npz", "testing", num_classes=10,
                                 resolution=32, seed=3)
    panel = InferencePanel(str(path))
    panel.classify_button.click()
    assert panel.messages.kind == "error" and "press Load" in panel.messages.text
    panel.load_button.click()
    assert panel.messages.kind == "info", panel.messages.text
    assert "10 classes, 32 px" in panel.info.value
    panel.use_samples.value = ("cat", "rocket launch")
    panel.classify_button.click()
    assert panel.messages.kind == "info", panel.messages.text
    assert len(panel.predictions) == 2 and all(len(p) == 5 for p in panel.predictions)
    # Independent forward pass: softmax of the model's logits on the same pre-processing.
    params = load(path, model_name="testing")
    x = prepare_images([panel.samples["cat"], panel.samples["rocket launch"]], 32)
    logits = np.asarray(create_model("testing", 10).apply({"params": params}, x, train=False))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for row, preds in zip(probs, panel.predictions, strict=True):
        top = np.argsort(-row)[:5]
        assert [p.index for p in preds] == top.tolist()
        np.testing.assert_allclose([p.prob for p in preds], row[top], rtol=1e-4, atol=1e-6)
    assert len(panel.figure.axes) == 4


def test_inference_panel_bad_checkpoint_is_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    panel = InferencePanel("not-a-checkpoint")
    panel.load_button.click()
    assert panel.messages.kind == "error"
    assert "Names look like" in panel.messages.text
    assert panel.params is None and not panel.load_button.disabled


def test_browser_on_a_complete_table_marks_the_rule_pick(real_env):
    from augreg_nb.testing.synthetic_index import make_synthetic_index

    df = make_synthetic_index(seed=1)
    df.attrs["provenance"] = {"source": "synthetic full table", "complete": True}
    # The paper's rule, computed here with pandas: best final_val among each model's i21k rows.
    i21k = df[df["ds"] == "i21k"]
    best = i21k.loc[i21k.groupby("name")["final_val"].idxmax(), "filename"]
    browser = IndexBrowser(df, state={"model": "B/16"}, limit=10)
    browser.fetchable_only.value = False
    browser.view_toggle.value = "upstream checkpoints"
    assert "the complete published table" in browser.provenance.value
    assert browser.view.total == df["filename"].nunique()
    marked = [f for f, m in zip(browser.view.files, browser.view.marked, strict=True) if m]
    b16 = {best[i] for i in best.index if df.at[i, "name"] == "B/16"}
    assert len(b16) == 1 and set(marked) == b16
    browser.filters["ds"].value = "i21k"  # sorted by upstream val accuracy: the pick first
    assert browser.view.files[0] in b16 and browser.view.marked[0]


def test_panels_for_a_notebook_session_take_the_parameters(tmp_path, catalogue, raw_rows):
    from types import SimpleNamespace

    session = SimpleNamespace(index=catalogue, smoke=False, smoke_env=None,
                              workdir=tmp_path / "runs", results_csv=tmp_path / "own.csv")
    panel = FinetunePanel.for_session(session, checkpoint="B/16", task="cifar100",
                                      resolution=384, lr=0.01, steps=10000, micro_batches=32)
    c = panel.config()
    assert (c.checkpoint, c.task, c.resolution, c.base_lr, c.total_steps, c.micro_batches) == (
        "B/16", "cifar100", 384, 0.01, 10000, 32)
    assert c.workdir.startswith(str(tmp_path / "runs"))
    browser = IndexBrowser.for_session(session, state={"model": "S/16", "task": ANY})
    assert set(browser.table["model"]) == {"S/16"}
    inference = InferencePanel.for_session(session, checkpoint=TI16_FT)
    suggestions = list(inference.checkpoint.options)
    imagenet = raw_rows[raw_rows["adapt_ds"] == "imagenet2012"]["adapt_filename"]
    assert inference.checkpoint.value == TI16_FT
    assert sorted(suggestions) == sorted(set(imagenet))
    first_upstreams = {s.split("--")[0] for s in suggestions[:5]}
    assert first_upstreams <= ib.recommended_files(catalogue)  # recommended models first


# --------------------------------------------------------------------------- what can be had


def test_availability_says_where_each_file_comes_from_for_this_user(catalogue, real_env,
                                                                    monkeypatch):
    from augreg_nb import index_queries as iq

    mirrored = _mirrored_names()
    assert iq.bucket_access() == iq.BUCKET_REFUSED  # public bucket, no credentials
    av = iq.availability(catalogue).set_index("filename")
    for name, row in av.iterrows():
        want = "HF mirror (free)" if name in mirrored else "bucket: needs access"
        assert (row["where"], bool(row["fetchable"])) == (want, name in mirrored), name
    # A cached copy and a file in the checkpoint folder come first.
    other = next(f for f in av.index if f not in mirrored)
    cache = real_env / "cache" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / f"{other}.npz").write_bytes(b"x")
    folder = real_env / "mine"
    folder.mkdir()
    (folder / f"{TI16_UP}.npz").write_bytes(b"x")
    monkeypatch.setenv("AUGREG_NB_CHECKPOINT_DIR", str(folder))
    av = iq.availability(catalogue).set_index("filename")
    assert (av.loc[other, "where"], av.loc[other, "fetchable"]) == ("cached", True)
    assert av.loc[TI16_UP, "where"] == "local"
    # Offline: only what is here.
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    assert iq.bucket_access() == iq.OFFLINE
    av = iq.availability(catalogue).set_index("filename")
    assert set(av.index[av["fetchable"].to_numpy()]) == {other, TI16_UP}
    assert av.loc[TI16_FT, "where"] == "needs network (offline)"
    # Credentials on this machine: the bucket may serve everything.
    monkeypatch.delenv("AUGREG_NB_OFFLINE")
    creds = real_env / "creds.json"
    creds.write_text("{}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    assert iq.bucket_access() == iq.BUCKET_CREDENTIALS
    av = iq.availability(catalogue).set_index("filename")
    assert av["fetchable"].all()
    assert av.loc[next(f for f in av.index if f not in mirrored | {other, TI16_UP}),
                  "where"] == "bucket (your credentials)"


def test_browser_starts_on_rows_that_can_be_fetched_when_the_bucket_refuses(catalogue,
                                                                            real_env):
    mirrored = _mirrored_names()
    browser = IndexBrowser(catalogue)
    assert browser.fetchable_only.value  # on by default: the bucket refuses
    assert len(browser.table) > 0
    assert set(browser.view.files) <= mirrored
    assert set(browser.table["available"]) == {"HF mirror (free)"}
    assert browser.selected in mirrored
    assert "refuses anonymous" in browser.access_note.value
    n_all = len(catalogue)
    n_fetchable = int(catalogue["adapt_filename"].astype(str).isin(mirrored).sum())
    assert f"<b>{n_fetchable}</b> of {n_all} rows" in browser.count.value
    assert f"{n_all - n_fetchable} more need access" in browser.count.value
    # Without the filter, the default selection is still a row that can be fetched.
    browser.fetchable_only.value = False
    assert "bucket: needs access" in set(browser.table["available"])
    assert browser.selected in mirrored
    # A task whose rows all need access (no Pets fine-tune is mirrored): an explanation.
    pets = catalogue[catalogue["adapt_ds"] == "oxford_iiit_pet"]
    assert len(pets) and not pets["adapt_filename"].astype(str).isin(mirrored).any()
    browser.fetchable_only.value = True
    browser.filters["task"].value = "oxford_iiit_pet"
    assert browser.table.empty
    assert f"None of the {len(pets)} matching rows" in browser.table_html.value
    assert "can be fetched now" in browser.table_html.value


def test_accuracies_are_ranked_within_each_task_never_across(catalogue, real_env):
    view = ib.browse(catalogue, {}, limit=12)
    tasks = view.table["task"].tolist()
    assert view.grouped_by_task and len(set(tasks)) == 2
    # Each task's rows are contiguous, and sorted best first within it.
    runs = [t for i, t in enumerate(tasks) if i == 0 or tasks[i - 1] != t]
    assert len(runs) == len(set(runs))
    for task in set(tasks):
        vals = view.table.loc[view.table["task"] == task, "val acc"].dropna().tolist()
        assert vals == sorted(vals, reverse=True)
        best = catalogue[catalogue["adapt_ds"] == task]["adapt_final_val"].max()
        assert vals[0] == pytest.approx(best)  # each task's best row is shown
    one = ib.browse(catalogue, {"task": "oxford_iiit_pet"}, limit=5)
    assert not one.grouped_by_task


def test_parameter_values_the_table_lacks_are_reported(catalogue, real_env):
    browser = IndexBrowser(catalogue, state={"task": "cifar100", "model": "B/16"})
    assert browser.notices.kind == "warning"
    assert "Task = 'cifar100'" in browser.notices.text
    assert "imagenet2012" in browser.notices.text  # the tasks the table has
    assert "Model" not in browser.notices.text  # B/16 is there
    assert browser.filters["task"].value == ANY
    assert IndexBrowser(catalogue, state={"task": "kitti"}).notices.kind == "warning"
    assert IndexBrowser(catalogue, state={"task": "oxford_iiit_pet"}).notices.kind is None


def test_a_filter_change_clears_the_previous_fetch_result(sources_env, catalogue):
    bucket = sources_env
    write_fake_checkpoint(bucket.root / f"{TI16_FT}.npz", "testing", num_classes=10,
                          resolution=32)
    browser = IndexBrowser(catalogue, state={"model": "Ti/16", "task": "imagenet2012",
                                             "resolution": 384, "wd": 0.03})
    browser.fetch_button.click()
    assert browser.messages.kind == "info"
    browser.filters["model"].value = "S/16"
    assert browser.messages.kind is None and browser.messages.widget.value == ""
    assert browser.progress.outputs == ()


def test_checkpoint_names_wrap_in_the_table_and_copy_whole(catalogue, real_env):
    browser = IndexBrowser(catalogue)
    page = browser.table_html.value
    name = browser.view.files[0]
    assert "-<wbr>" in page and "white-space:nowrap" in page
    assert name.replace("-", "-<wbr>").replace("_", "_<wbr>") in page
    import re

    assert name in re.sub("<wbr>", "", page)


# --------------------------------------------------------------------------- fetch feedback


def _closed_port_url() -> str:
    """A loopback URL where nothing listens: connections are refused, as without network."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def test_fetch_says_which_source_it_is_trying(sources_env, catalogue):
    bucket = sources_env
    write_fake_checkpoint(bucket.root / f"{TI16_FT}.npz", "testing", num_classes=10,
                          resolution=32)
    browser = IndexBrowser(catalogue, state={"model": "Ti/16", "task": "imagenet2012",
                                             "resolution": 384, "wd": 0.03})
    seen = []
    browser.status.observe(lambda change: seen.append(change["new"]), names="value")
    browser.fetch_button.click()
    assert browser.messages.kind == "info", browser.messages.text
    trying = [v for v in seen if "trying source" in v]
    # cache, then the bucket, which serves it: two sources of four, in that order.
    assert [v.split("trying source ")[1].split(":")[0] for v in trying] == ["1 of 4", "2 of 4"]
    assert "public bucket URL" in trying[-1]
    assert browser.status.value == ""  # gone once the fetch is over


def test_fetch_without_network_fails_fast_with_one_message(sources_env, catalogue,
                                                           monkeypatch):
    monkeypatch.setenv("AUGREG_NB_BUCKET_URL", _closed_port_url())
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    browser = IndexBrowser(catalogue, state={"model": "Ti/16", "task": "imagenet2012",
                                             "resolution": 384, "wd": 0.03})
    assert browser.selected == TI16_FT  # mirrored on the Hub: the long case before
    start = time.monotonic()
    browser.fetch_button.click()
    assert time.monotonic() - start < 5
    assert browser.messages.kind == "error"
    assert "no network" in browser.messages.text
    assert "Traceback" not in browser.messages.text
    shown = "".join(str(o) for o in browser.progress.outputs)
    assert "Retrying" not in shown
    assert browser.status.value == ""


def test_a_failed_load_clears_the_previous_model(tmp_path, monkeypatch):
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    path = write_fake_checkpoint(tmp_path / "fake.npz", "testing", num_classes=10,
                                 resolution=32, seed=3)
    panel = InferencePanel(str(path))
    seen = []
    panel.status.observe(lambda change: seen.append(change["new"]), names="value")
    panel.load_button.click()
    assert any("trying source 1 of" in v for v in seen)
    panel.classify_button.click()
    assert panel.figure is not None and "10 classes" in panel.info.value
    panel.checkpoint.value = str(tmp_path / "missing.npz")
    panel.load_button.click()
    assert panel.messages.kind == "error"
    assert panel.params is None and panel.figure is None and panel.predictions is None
    assert panel.info.value == "" and panel.output.outputs == ()
    panel.classify_button.click()
    assert "press Load" in panel.messages.text


def test_a_long_cpu_run_is_paused_after_a_measured_step_to_say_how_long(tmp_path,
                                                                       catalogue):
    from augreg_nb.callbacks import StopFlag

    panel = FinetunePanel(catalogue, workdir=tmp_path / "runs", checkpoint=TI16_UP,
                          task="oxford_iiit_pet", steps=500)
    progress = ftp._ProgressWidgets(panel.bar, panel.bar_label,
                                    on_estimate=panel._on_estimate)
    panel._stop, panel._measuring = StopFlag(), True
    progress.on_train_begin({"total_steps": 500, "start_step": 0, "global_batch": 512})
    # Step 2 measured at 64 img/s: 8 s per step, 498 steps left.
    progress.on_log(2, {"loss": 3.6, "lr": 1e-4, "img_per_sec": 64.0})
    assert panel.estimate == (2, 8.0, 498 * 8.0)
    assert panel._stop.stop_requested and panel._stop.reason == "estimate"
    assert "about 66 min left" in panel.bar_label.value
    # A short run is not paused.
    panel._stop, panel._measuring = StopFlag(), True
    progress.on_log(2, {"loss": 3.6, "lr": 1e-4, "img_per_sec": 5120.0})
    assert not panel._stop.stop_requested


def test_a_folder_of_images_is_a_task_with_the_paper_recipe(tmp_path, catalogue):
    from PIL import Image

    folder = tmp_path / "flowers"
    for k, cls in enumerate(("daisy", "roses")):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (80 * k, 40 * i, 90)).save(folder / cls / f"{i}.jpg")
    panel = FinetunePanel(catalogue, workdir=tmp_path / "runs", checkpoint=TI16_UP)
    assert panel.folder.layout.display != "none"
    panel.folder.value = str(folder)
    panel.steps.value = 500
    c = panel.config()
    assert c.task == str(folder) and panel.task_name == str(folder)
    assert list(panel.steps.options) == [500, 2500, 10000, 20000]
    assert list(panel.resolution.options) == [224, 384]
    assert (c.global_batch, c.total_steps, c.warmup_steps) == (512, 500, 100)  # Table 4
    assert not panel.start_button.disabled
    from augreg_nb.train import load_task

    task = load_task(c)  # the same task the Python API builds from the folder
    assert task.num_classes == 2 and task.folder is not None
    panel.folder.value = str(tmp_path / "missing")
    assert panel.start_button.disabled and "is not a folder" in panel.messages.text
    panel.folder.value = ""
    assert panel.config().task == panel.task.value and not panel.start_button.disabled
    # Smoke mode hides it: a folder task needs a real checkpoint, a download.
    smoke = FinetunePanel(catalogue, workdir=tmp_path / "runs", smoke=True)
    assert smoke.folder.layout.display == "none"


def test_a_tfds_dataset_is_a_task_with_the_paper_recipe(tmp_path, catalogue):
    import tensorflow_datasets as tfds

    from augreg_nb.testing.datasets import write_tfds_metadata
    from augreg_nb.train import load_task

    panel = FinetunePanel(catalogue, workdir=tmp_path / "runs", checkpoint=TI16_UP)
    assert panel.tfds.layout.display != "none"
    # Not prepared (the tests' TFDS_DATA_DIR is empty): Start stays off, the fix is shown.
    panel.tfds.value = "tf_flowers"
    assert panel.start_button.disabled
    assert "tfds build tf_flowers" in panel.messages.text
    write_tfds_metadata("tf_flowers", tmp_path / "tfds", {"train": 3670})
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=str(tmp_path / "tfds"), num_examples=4):
        panel.tfds.value = "tfds:tf_flowers"  # typed with or without the prefix
        panel.tfds.value = "tf_flowers"
        assert not panel.start_button.disabled, panel.messages.text
        panel.steps.value = 2500
        panel.resolution.value = 384
        c = panel.config()
        assert c.task == "tfds:tf_flowers" == panel.task_name
        assert list(panel.steps.options) == [500, 2500, 10000, 20000]
        assert (c.global_batch, c.total_steps, c.warmup_steps, c.resolution) == (
            512, 2500, 200, 384)  # Table 4
        task = load_task(c)  # the task the Python API resolves from the same name
        assert task.num_classes == 5 and task.split("test") == "train[90%:]"
        # Splits in the field are used as given.
        panel.tfds.value = "tf_flowers?train=train[:50%]&val=train[50%:60%]&test=train[60%:]"
        assert load_task(panel.config()).split("val") == "train[50%:60%]"
        # A folder and a dataset at once: say which to clear.
        panel.folder.value = str(tmp_path)
        assert panel.start_button.disabled and "clear one" in panel.messages.text
        panel.folder.value = ""
        panel.tfds.value = "no_such_dataset_xyz"
        assert panel.start_button.disabled and "no_such_dataset_xyz" in panel.messages.text
        panel.tfds.value = ""
        assert panel.config().task == panel.task.value and not panel.start_button.disabled
    # Smoke mode offers only what runs offline.
    smoke = FinetunePanel(catalogue, workdir=tmp_path / "runs", smoke=True)
    assert smoke.tfds.layout.display == "none"


def test_header_clicks_sort_and_row_clicks_select(catalogue, raw_rows, real_env):
    browser = IndexBrowser(catalogue, limit=1000)
    browser.fetchable_only.value = False  # every row, fetchable now or not
    browser.filters["task"].value = "imagenet2012"
    browser.filters["model"].value = "S/32"
    rows = raw_rows[(raw_rows["name"] == "S/32") & (raw_rows["adapt_ds"] == "imagenet2012")]
    assert len(rows) > 3

    def shown(column):
        return browser.table[column].dropna().tolist()

    # A header sorts by its column, best first; a second click on it reverses the order.
    browser.headers["test acc"].click()
    assert shown("test acc") == sorted(rows["adapt_final_test"].dropna(), reverse=True)
    assert browser.headers["test acc"].description == "test acc ▼"
    assert browser.headers["val acc"].description == "val acc"
    browser.headers["test acc"].click()
    assert shown("test acc") == sorted(rows["adapt_final_test"].dropna())
    assert browser.headers["test acc"].description == "test acc ▲"
    browser.headers["val acc"].click()
    assert shown("val acc") == sorted(rows["adapt_final_val"].dropna(), reverse=True)
    # Inference speed and parameters are not columns; their order follows the index's.
    browser.headers["img/s"].click()
    speed = rows.set_index("adapt_filename")["infer_samples_per_sec"]
    assert speed[browser.view.files].dropna().tolist() == sorted(speed.dropna(), reverse=True)

    # Models: the paper's order first (ascending), then reversed.
    browser.filters["model"].value = "(any)"
    browser.headers["model"].click()
    order = {m: i for i, m in enumerate(names.MODELS)}
    ranks = [order[m] for m in browser.table["model"]]
    assert ranks == sorted(ranks) and len(set(ranks)) > 1
    browser.headers["model"].click()
    ranks = [order[m] for m in browser.table["model"]]
    assert ranks == sorted(ranks, reverse=True)

    # The upstream view offers only its own sorts, and keeps its own: best upstream first.
    browser.view_toggle.value = "upstream checkpoints"
    visible = [k for k, b in browser.headers.items() if b.layout.display != "none"]
    assert visible == ["model", "upstream val"]
    assert browser.headers["upstream val"].description == "upstream val ▼"
    ups = raw_rows[raw_rows["adapt_ds"] == "imagenet2012"].drop_duplicates("filename")
    assert shown("upstream val") == sorted(ups["final_val"].dropna(), reverse=True)
    browser.headers["upstream val"].click()
    assert shown("upstream val") == sorted(ups["final_val"].dropna())
    # Back in the fine-tunes: their sort (models, reversed), not "upstream val".
    browser.view_toggle.value = "fine-tunes"
    assert (browser.sort.value, browser.descending.value) == ("model", True)
    assert browser.headers["model"].description == "model ▼"
    browser.view_toggle.value = "upstream checkpoints"
    assert browser.headers["upstream val"].description == "upstream val ▲"
    browser.view_toggle.value = "fine-tunes"

    # Rows: one line each in the list, in table order, ending with the full name; a click
    # on a line selects that row's checkpoint, and Fetch would take it.
    labels = list(browser.selection.options)
    assert [f for _, f in labels] == browser.table["checkpoint"].tolist()
    assert all(label.endswith(f" — {f}") for label, f in labels)
    assert labels[0][0].startswith(browser.table["rec."].iloc[0] or " ")
    third = browser.table["checkpoint"].iloc[2]
    browser.selection.value = third  # what clicking the third line does in the browser
    assert browser.selected == third
    page = browser.table_html.value.replace("<wbr>", "")
    outlined = page.split("class='augreg-selected'")
    assert len(outlined) == 2 and third in outlined[1].split("</tr>")[0]  # the table shows it
    assert ib.file_to_fetch(browser.view, browser.selected, "fine-tuned") == third
    up = raw_rows.loc[raw_rows["adapt_filename"] == third, "filename"].iloc[0]
    assert ib.file_to_fetch(browser.view, browser.selected, "upstream") == up
    # Sorting keeps the selection when the row is still shown.
    browser.headers["test acc"].click()
    assert browser.selected == third


def test_sort_after_click_is_a_pure_rule():
    assert ib.sort_after_click("fine-tuned val accuracy", True, "val acc") == (
        "fine-tuned val accuracy", False)
    assert ib.sort_after_click("fine-tuned val accuracy", False, "params") == (
        "parameters", True)
    assert ib.sort_after_click("parameters", True, "model") == ("model", False)
    with pytest.raises(ValueError, match="no header"):
        ib.sort_after_click("model", False, "checkpoint")
    assert ib.header_labels("upstream checkpoints") == ["model", "upstream val"]


def test_a_kernel_interrupt_stops_a_running_panel_and_otherwise_reaches_the_kernel(monkeypatch):
    import types

    import IPython

    from augreg_nb.widgets.augreg_panel import AugregPanel
    from augreg_nb.widgets.common import stop_on_kernel_interrupt

    calls = []
    kernel = types.SimpleNamespace(saved_sigint_handler=lambda s, f: calls.append("kernel"))
    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace(kernel=kernel))

    class Panel:
        running = True

        def stop(self, reason):
            calls.append(reason)

    panel = Panel()
    stop_on_kernel_interrupt(panel)
    handler = kernel.saved_sigint_handler
    stop_on_kernel_interrupt(panel)  # once per panel: no handler wrapped twice
    assert kernel.saved_sigint_handler is handler
    handler(2, None)
    panel.running = False
    handler(2, None)
    assert calls == ["kernel interrupted", "kernel"]

    grid = AugregPanel(smoke=True)
    assert not grid.running
    grid.stop("kernel interrupted")
    assert grid.stop_event.is_set() and "kernel interrupted" in grid.messages.widget.value
