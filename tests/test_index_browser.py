"""Notebook 1's browser at its edges: name height and copying, the sort of each view, the
words of its controls."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from augreg_nb import index as index_lib
from augreg_nb.widgets import IndexBrowser
from augreg_nb.widgets import index_browser as ib
from augreg_nb.widgets.common import ANY, table_html


@pytest.fixture(scope="module")
def catalogue() -> pd.DataFrame:
    return index_lib.load_index("catalogue")


def test_clamped_cells_show_two_lines_and_keep_the_whole_name():
    name = "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k"
    df = pd.DataFrame({"model": ["Ti/16"], "checkpoint": [name]})
    page = table_html(df, wrap_columns=("checkpoint",), clamp_lines=2)
    (cell,) = re.findall(r"<div class='augreg-clamp'[^>]*>(.*?)</div>", page)
    assert cell.replace("<wbr>", "") == name  # the whole name is there, to copy
    assert "-webkit-line-clamp:2" in page and "user-select:all" in page
    assert f"title='{name}'" in page
    assert "augreg-clamp" not in table_html(df, wrap_columns=("checkpoint",))


def test_the_browser_keeps_names_short_and_offers_the_selected_one_to_copy(catalogue,
                                                                          real_env):
    browser = IndexBrowser(catalogue, limit=1000)
    browser.fetchable_only.value = False
    page = browser.table_html.value
    assert page.count("class='augreg-clamp'") == 2 * len(browser.view.files)  # name, where
    assert f"-webkit-line-clamp:{ib.NAME_LINES}" in page and ib.NAME_LINES == 2
    assert f"max-height:{ib.TABLE_HEIGHT}" in page
    assert browser.selection.rows == min(len(browser.view.files), ib.LIST_ROWS) > 8
    assert browser.copy.value == browser.selected
    third = browser.view.files[2]
    browser.selection.value = third
    assert browser.copy.value == third
    browser.copy.value = "typed over"  # not an input: the name comes back
    assert browser.copy.value == third and browser.selected == third


def test_grouped_rows_say_which_end_comes_first(catalogue, real_env):
    browser = IndexBrowser(catalogue, limit=1000)
    browser.fetchable_only.value = False
    assert browser.view.grouped_by_task
    assert "grouped by task, best first within each" in browser.count.value
    browser.headers["val acc"].click()  # the current sort: reversed
    assert browser.view.grouped_by_task and not browser.descending.value
    assert "grouped by task, lowest first within each" in browser.count.value
    assert "best first" not in browser.count.value


def test_controls_have_names_of_their_own_and_filters_sit_in_a_grid(catalogue, real_env):
    browser = IndexBrowser(catalogue)
    assert browser.fetch_button.description == "Fetch checkpoint"
    # The toggles' labels sit on their line, and only the button is called "Fetch ...".
    rows = [c for c in browser.widget.children if isinstance(c, ib.w.HBox)]
    labels = {row.children[0].value: row.children[1] for row in rows
              if row.children and isinstance(row.children[0], ib.w.HTML)}
    assert labels["<b>Show</b>"] is browser.view_toggle
    assert labels["<b>File of the row</b>"] is browser.kind
    assert not browser.kind.description and not browser.view_toggle.description
    grid = browser.filter_grid
    assert list(grid.children) == list(browser.filters.values())
    assert "auto-fill" in grid.layout.grid_template_columns
    assert all(f.layout.width == "auto" for f in browser.filters.values())
    assert browser.filters["model"].value == ANY


def test_table_rows_carry_the_click_that_selects_them(catalogue, real_env):
    import html as html_lib

    browser = IndexBrowser(catalogue, limit=1000)
    browser.fetchable_only.value = False
    assert ib.BROWSER_CLASS in browser.widget._dom_classes
    assert ib.ROWS_CLASS in browser.selection._dom_classes
    clicks = re.findall(r'<tr[^>]* onclick="([^"]*)"', browser.table_html.value)
    assert len(clicks) == len(browser.view.files)
    for i, click in enumerate(clicks[:5]):
        script = html_lib.unescape(click)
        assert script == ib.ROW_CLICK.replace("{row}", str(i))
        assert f"s.selectedIndex={i};" in script and "'change',{bubbles:true}" in script
    # The list the clicks drive lists the rows in the table's order.
    assert [f for _, f in browser.selection.options] == browser.view.files
    # A page without a click script has none.
    assert "onclick" not in table_html(browser.view.table)
