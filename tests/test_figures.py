"""The paper's figures: what is drawn from the shipped tables, and the index path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, QuadMesh

from augreg_nb import figures
from augreg_nb.figures import derive, paper, synthetic
from augreg_nb.names import parse_name
from augreg_nb.resources import data_path

MODELS9 = list(paper.PAPER_MODELS)


@pytest.fixture(scope="module")
def synth() -> pd.DataFrame:
    return synthetic.paper_index()


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _mesh(ax) -> np.ma.MaskedArray:
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return mesh.get_array()


# ---------------------------------------------------------------- drawn from shipped data


def test_fig3_draws_three_groups_of_three_pretraining_sets():
    fig = figures.plot_fig3(figures.fig3_data(), highlight="B/16")
    axes = fig.axes
    assert [a.get_title() for a in axes] == [
        "VTAB natural", "VTAB specialized", "VTAB structured"]
    assert all(a.get_xscale() == "log" for a in axes)
    assert "Mean top-1" in axes[0].get_ylabel()
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["ImageNet-1k, 300ep", "ImageNet-21k, 30ep", "ImageNet-21k, 300ep",
                      "highlighted: B/16"]
    series = [c for c in axes[0].collections if isinstance(c, PathCollection)
              and c.get_label() in legend[:3]]
    assert [len(c.get_offsets()) for c in series] == [9, 9, 9]
    # B/16 on ImageNet-21k 300ep: Table 3's 659 img/s and Table 5's natural mean 91.8.
    points = {tuple(p) for p in np.asarray(series[2].get_offsets()).tolist()}
    assert (659.0, 91.8) in points


def test_fig4_heatmaps_have_models_by_augs_and_the_thin_column():
    tidy = figures.fig4_data()
    assert len(tidy) == 3 * 9 * 14 + 3 * 9
    fig = figures.plot_fig4(tidy, highlight="B/16")
    fig.draw_without_rendering()
    panels = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in panels] == list(paper.DS_LABELS.values())
    for ax in panels:
        values = _mesh(ax)
        assert values.shape == (9, 16)  # 14 cells, a gap, the thin column
        assert int(values.count()) == 9 * 15
    # The panels are stacked and share one row of augmentation names, at the bottom.
    ticks = [t.get_text() for t in panels[-1].get_xticklabels()]
    assert ticks[:7] == ticks[7:14] == ["none", "light1", "light2", "medium1", "medium2",
                                         "strong1", "strong2"]
    assert ticks[14] == "reg - noreg"
    assert all(panels[-1].get_shared_x_axes().joined(panels[-1], ax) for ax in panels)
    i1k = panels[0]
    labels = i1k.get_yticklabels()
    assert [t.get_text() for t in labels] == MODELS9
    assert [t.get_text() for t in labels if t.get_fontweight() == "bold"] == ["B/16"]
    # R+Ti/16 (first row): none/noreg 69, light1 73 -> colour +4; thin column -2.
    assert _mesh(i1k)[0, 0] == 0 and _mesh(i1k)[0, 1] == 4 and _mesh(i1k)[0, 15] == -2
    assert _texts(i1k)[:2] == ["69", "73"] and "-2" in _texts(i1k)[:16]


def test_fig7_and_fig5_heatmaps():
    fig7 = figures.plot_fig7(figures.fig7_data())
    panels = [a for a in fig7.axes if a.get_title()]
    assert len(panels) == 3 and all(_mesh(a).shape == (9, 7) for a in panels)
    b32 = MODELS9.index("B/32")
    assert _mesh(panels[0])[b32, 0] == 6  # ImageNet-1k, B/32, none: +6
    assert _texts(panels[0])[b32 * 7] == "+6"
    fig5 = figures.plot_fig5(figures.fig5_data())
    ax = fig5.axes[0]
    assert _mesh(ax).shape == (9, 6)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(paper.FIG5_TASKS)
    assert "+6.2" in _texts(ax) and "-3.6" in _texts(ax)
    assert fig5._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # shows itself in a notebook


def test_fig6_scatter_and_patch_vs_width():
    tidy = figures.fig6_data()
    assert len(tidy) == 9 * 3 * 2
    fig = figures.plot_fig6(tidy, highlight="S/32")
    left, right = fig.axes[:2]
    assert left.get_xscale() == right.get_xscale() == "log"
    scatters = [c for c in left.collections if len(c.get_offsets()) == 9]
    assert len(scatters) == 6  # 3 pre-training sets x 2 resolutions
    all_points = np.concatenate([np.asarray(c.get_offsets()) for c in scatters])
    assert any(np.allclose(p, (50, 85.59)) for p in all_points)  # L/16 i21k @384
    # Right: per set, S/16->S/32, S/16->Ti/16, B/16->B/32, B/16->S/16 at 224 px.
    assert len(right.get_lines()) == 12
    ys = {tuple(np.round(line.get_ydata(), 2)) for line in right.get_lines()}
    assert (80.46, 73.47) in ys and (80.46, 73.75) in ys  # i21k: S/16 -> S/32, Ti/16
    assert "larger patch (/32)" in [t.get_text() for t in right.get_legend().get_texts()]


def test_tables_as_stylers():
    t3 = figures.style_table3(figures.table3_data(), highlight="B/16")
    html = t3.to_html()
    assert "i21k 300ep 384" in html and "85.49" in html and "84.15" in html
    t5 = figures.style_table5(figures.table5_data())
    data = t5.data
    assert data.shape == (27, 22)
    assert data.loc[("ImageNet-21k (300ep)", "B/16"), ("natural", "Mean natural")] == 91.8
    with pytest.raises(ValueError, match="Table 5 .VTAB. cannot be derived"):
        figures.table5_data(pd.DataFrame())


def test_fig1_needs_the_full_index():
    with pytest.raises(ValueError, match="full index"):
        figures.fig1_data()
    assert set(figures.NOT_REPRODUCIBLE) == {"Figure 2", "Figure 5 (right)"}


# ---------------------------------------------------------------- the index path


def test_index_path_reproduces_the_paper_on_the_synthetic_index(synth):
    t3p, t3i = figures.table3_data(), figures.table3_data(synth)
    derivable = [c for c in t3p.columns if c not in ("i21k_v2_384", "jft300m_384")]
    np.testing.assert_allclose(t3i.loc[t3p.index, derivable], t3p[derivable], atol=1e-9)
    assert t3i[["i21k_v2_384", "jft300m_384"]].isna().all().all()

    keys = ["ds", "model", "aug", "reg", "measure"]
    f4 = figures.fig4_data().merge(figures.fig4_data(synth), on=keys, suffixes=("_p", "_i"))
    assert len(f4) == 3 * 9 * 15
    cells = f4[f4["measure"] == "val_acc"]
    assert (np.round(cells["value_i"]) == cells["value_p"]).all()
    thin = f4[f4["measure"] == "reg_minus_noreg"]
    assert (np.round(thin["value_i"]) == thin["value_p"]).all()

    f7 = figures.fig7_data().merge(figures.fig7_data(synth), on=["ds", "model", "aug"])
    assert len(f7) == 189 and (np.round(f7["value_y"]) == f7["value_x"]).all()

    f5 = figures.fig5_data().merge(figures.fig5_data(synth), on=["model", "task"])
    v2 = f5["task"] == "INet-1k (v2 val)"
    assert f5.loc[v2, "delta_y"].isna().all()
    np.testing.assert_allclose(f5.loc[~v2, "delta_y"], f5.loc[~v2, "delta_x"], atol=1e-9)

    f6 = figures.fig6_data().merge(figures.fig6_data(synth), on=["ds", "model", "resolution"])
    assert len(f6) == 54
    np.testing.assert_allclose(f6["top1_y"], f6["top1_x"], atol=1e-9)
    f3 = figures.fig3_data(synth)
    assert (f3["img_per_sec"] == figures.fig3_data()["img_per_sec"]).all()


def test_fig4_cell_is_max_over_weight_decay(synth):
    # Independent check of one cell: plain pandas on the upstream rows.
    ups = synth.drop_duplicates("filename")
    rows = ups[(ups["name"] == "B/16") & (ups["ds"] == "i21k") & (ups["aug"] == "light0")
               & (ups["do"] == 0.1)]
    assert len(rows) == 2  # two weight decays
    tidy = figures.fig4_data(synth)
    cell = tidy[(tidy["model"] == "B/16") & (tidy["ds"] == "i21k") & (tidy["aug"] == "light1")
                & tidy["reg"] & (tidy["measure"] == "val_acc")]
    assert cell["value"].item() == pytest.approx(100 * rows["final_val"].max())


def test_selection_rules_agree_with_the_index_module(synth):
    from augreg_nb import index

    table = synth.copy()
    table.attrs["provenance"] = {"complete": True}  # apply the rule, not published picks
    rec = index.recommended_checkpoints(table, method="rule")
    ours = derive.best_upstreams(synth, "i21k").set_index("name")["filename"]
    assert rec["filename"].to_dict() == ours.to_dict()
    up = ours["R26+S/32"]
    row = index.best_finetune(table, up, "imagenet2012", 384)
    ft = derive.best_finetunes(synth, [up], "imagenet2012", 384)
    assert row["adapt_filename"] == ft["adapt_filename"].item()


def test_fig1_from_the_index(synth):
    tidy = figures.fig1_data(synth)
    assert len(tidy) == 3 * 3 * 2 + 3
    # Without AugReg: independent selection of the aug none / no reg upstream (best wd),
    # then its best ImageNet fine-tune at 384 px by validation accuracy.
    plain = synth[(synth["name"] == "L/16") & (synth["ds"] == "i21k") & (synth["aug"] == "none")
                  & (synth["do"] == 0) & (synth["sd"] == 0)]
    up = plain.loc[plain["final_val"].idxmax(), "filename"]
    fts = plain[(plain["filename"] == up) & (plain["adapt_ds"] == "imagenet2012")
                & (plain["adapt_resolution"] == 384)]
    expected = 100 * fts.loc[fts["adapt_final_val"].idxmax(), "adapt_final_test"]
    got = tidy.query("model == 'L/16' and pretrain == 'i21k' and not augreg")["top1"].item()
    assert got == pytest.approx(expected)
    own = fts.head(1).assign(adapt_final_test=0.8)
    fig = figures.plot_fig1(tidy, highlight="L/16", overlay=own)
    ax = fig.axes[0]
    b16 = [line for line in ax.get_lines() if line.get_color() == "tab:blue"]
    augreg_line = [line for line in b16 if line.get_linestyle() == "-"][0]
    np.testing.assert_allclose(augreg_line.get_ydata(), [81.63, 83.46, 85.49])
    stars = [c for c in ax.collections if len(c.get_offsets()) == 1]
    assert np.allclose(stars[-1].get_offsets()[0], (2.08, 80.0))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[-1] == "JFT-300M" and "own" in [t.get_text() for t in ax.get_legend().texts]


def test_comparison_flags_only_differences_beyond_rounding(synth):
    table = figures.compare_with_paper(synth)
    assert set(table["item"]) == {"Table 3", "Figure 4", "Figure 5", "Figure 7"}
    assert not table["differs"].any()
    assert table.loc[table["index"].isna(), "column"].isin(
        ["i21k_v2_384", "jft300m_384", "INet-1k (v2 val)"]).all()
    # Move B/16's selected ImageNet fine-tune at 384 px by 0.2 points: exactly that is flagged.
    changed = synth.copy()
    ups = derive.best_upstreams(changed, "i21k").set_index("name")
    ft = derive.best_finetunes(changed, [ups.at["B/16", "filename"]], "imagenet2012", 384)
    row = changed["adapt_filename"] == ft["adapt_filename"].item()
    changed.loc[row, "adapt_final_test"] += 0.002
    new = figures.compare_with_paper(changed)
    t3 = new[(new["item"] == "Table 3") & new["differs"]]
    assert t3[["model", "column"]].values.tolist() == [["B/16", "i21k_300_384"]]
    assert t3["difference"].item() == pytest.approx(0.2)
    assert "differ beyond" in figures.style_comparison(new).to_html()


def _real_best_rows() -> pd.DataFrame:
    """The published best i21k upstream per model with its best ImageNet fine-tune, in the
    index's 21 columns (the configuration read off the filenames)."""
    src = pd.read_csv(data_path("index",
                                "vit_jax_augreg_nb_cell21_best_i21k_per_model_imagenet2012.csv"))
    rows = []
    for r in src.itertuples():
        n = parse_name(r.adapt_filename)
        rows.append({
            "name": n.model, "ds": n.pretraining, "epochs": n.epochs, "lr": n.lr, "aug": n.aug,
            "wd": n.wd, "do": n.do, "sd": n.sd, "best_val": np.nan, "final_val": np.nan,
            "final_test": np.nan, "adapt_ds": n.adapt_ds, "adapt_lr": n.adapt_lr,
            "adapt_steps": n.adapt_steps, "adapt_resolution": n.adapt_resolution,
            "adapt_final_val": np.nan, "adapt_final_test": r.adapt_final_test, "params": np.nan,
            "infer_samples_per_sec": r.infer_samples_per_sec, "filename": r.filename,
            "adapt_filename": r.adapt_filename,
        })
    return pd.DataFrame(rows)[list(derive.INDEX_COLUMNS)]


def test_real_published_rows_reproduce_table3_i21k_300ep_384():
    t3 = figures.table3_data(_real_best_rows())
    expected = paper.table3()["i21k_300_384"]
    assert list(expected.index) == [m for m in expected.index if m in t3.index]
    np.testing.assert_array_equal(t3.loc[expected.index, "i21k_300_384"].round(2), expected)
    np.testing.assert_array_equal(t3.loc[expected.index, "img_sec_384"].round(),
                                  paper.table3()["img_sec_384"])


def test_own_finetunes_beside_published():
    known = pd.read_csv(data_path("index", "index_csv_known_rows_union.csv"))
    pets = known[known["adapt_ds"] == "oxford_iiit_pet"].head(2)
    own = pets[list(derive.INDEX_COLUMNS)].assign(adapt_final_test=[0.95, 0.90])
    table = figures.compare_finetunes(own)
    np.testing.assert_allclose(table["published_test"],
                               100 * pets["adapt_final_test"].to_numpy())
    np.testing.assert_allclose(table["difference"],
                               [95 - 100 * pets["adapt_final_test"].iat[0],
                                90 - 100 * pets["adapt_final_test"].iat[1]])
    fig = figures.plot_finetunes(table)
    assert len(fig.axes[0].get_yticklabels()) == 2
    # One result row as the fine-tuning engine returns it (a dict) works the same way.
    one = figures.compare_finetunes(own.iloc[0].to_dict())
    assert one["difference"].item() == pytest.approx(table["difference"].iat[0])
    with pytest.raises(ValueError, match="adapt_final_test"):
        figures.compare_finetunes(own.drop(columns="adapt_final_test"))


def test_fig6_overlay_draws_own_rows(synth):
    own = synth[(synth["name"] == "S/16") & (synth["adapt_ds"] == "imagenet2012")].head(1)
    own = own.assign(adapt_final_test=0.7, infer_samples_per_sec=np.nan)
    fig = figures.plot_fig6(figures.fig6_data(), overlay=own)
    singles = [np.asarray(c.get_offsets())[0] for c in fig.axes[0].collections
               if len(c.get_offsets()) == 1]
    res = int(own["adapt_resolution"].item())
    assert any(np.allclose(p, (paper.table3().at["S/16", f"img_sec_{res}"], 70.0))
               for p in singles)


def test_bad_index_is_explained():
    with pytest.raises(ValueError, match="lacks the column"):
        figures.table3_data(pd.DataFrame({"name": ["B/16"]}))
