"""Notebook 3's tables at their edges: Table 5 in one table per group that fits, own result
rows without empty columns, and Figure 1's advice."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from augreg_nb import figures
from augreg_nb.figures import paper
from augreg_nb.index import COLUMNS
from augreg_nb.widgets import figure_picker as fp


def test_table5_in_one_table_per_group_holds_every_number_once():
    tidy = figures.table5_data()
    whole = figures.style_table5(tidy).data
    grouped = figures.style_table5_groups(tidy, highlight="B/16")
    assert list(grouped.stylers) == list(paper.VTAB_GROUPS)
    widths = {g: s.data.shape[1] for g, s in grouped.stylers.items()}
    assert widths == {"natural": 8, "specialized": 5, "structured": 9}  # tasks + mean
    assert sum(widths.values()) == whole.shape[1] == 22
    pd.testing.assert_frame_equal(grouped.data, whole)
    html = grouped.to_html()
    assert html.count("<table") == 3 and html.count("augreg-table-group") == 3
    assert "Table 5, structured tasks" in html and "background-color: #fff3b0" in html
    assert "position: sticky" in html  # the model columns stay when a group scrolls
    with pytest.raises(ValueError, match="group must be one of"):
        figures.style_table5(tidy, group="natural tasks")


def test_the_picker_shows_table5_per_group():
    shown = fp.render("table5")
    assert shown.html.count("<table") == 3
    assert "Mean natural" in shown.html and "Mean structured" in shown.html


def test_own_result_rows_without_empty_columns():
    extra = ("workdir", "vtab_task", "group", "column", "runs", "retrained", "selected_test")
    cols = [*COLUMNS, *extra]
    rows = pd.DataFrame([{c: np.nan for c in cols} for _ in range(2)], columns=cols)
    rows["name"], rows["ds"] = "B/16", "i21k"
    rows["adapt_ds"] = ["vtab1k/caltech101", "vtab1k/dtd"]
    rows["adapt_final_val"], rows["adapt_final_test"] = [0.9, 0.7], [0.88, 0.66]
    rows["adapt_steps"], rows["adapt_lr"], rows["adapt_resolution"] = 2500, 0.01, 384
    rows["vtab_task"], rows["runs"] = ["caltech101", "dtd"], 4
    rows["workdir"] = ""  # a text column with nothing in it
    view = figures.result_rows_view(rows)
    assert len(rows.columns) == 28
    assert list(view.columns) == ["adapt_ds", "name", "ds", "adapt_steps", "adapt_lr",
                                  "adapt_resolution", "adapt_final_val", "adapt_final_test",
                                  "vtab_task", "runs"]
    assert view["adapt_final_test"].tolist() == [0.88, 0.66] and len(view) == 2
    assert list(figures.result_rows_view(rows.to_dict("records")).columns) == list(view.columns)


def test_figure1_without_an_index_does_not_advise_the_paper_tables():
    with pytest.raises(ValueError) as info:
        fp.render("fig1", source="paper")
    text = str(info.value)
    assert "choose the paper tables" not in text and "choose another figure" in text
    assert "index.csv" in text
    with pytest.raises(ValueError, match="choose the paper tables as the data source"):
        fp.render("fig4", source="index")
    assert re.search("full index", text)
