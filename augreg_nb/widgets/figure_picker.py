"""The figure picker of notebook 3: the paper's figures and tables, own results overlaid.

:func:`render` is the pure part: (item, data source, highlighted models, own results) in,
a matplotlib Figure or an HTML table out::

    from augreg_nb.widgets.figure_picker import FigurePicker, render
    shown = render("fig4", source="paper", highlight=["B/16"])
    shown.figure                            # matplotlib Figure (or shown.html for tables)

    picker = FigurePicker(index=full_index_df, results_csv="augreg_results.csv")
    picker                                  # redraws as the controls change
    picker.item.value = "comparison"        # index-derived numbers beside the paper's

Data sources: ``paper`` (the numbers printed in the paper, shipped with the package) or
``index`` (derived from a full index table; Figure 1 and the comparison need it). Own
results are the rows the fine-tuning panel exports (index schema): ImageNet fine-tunes are
drawn as black stars in Figures 1 and 6, and every own run is set beside the published run
of the same configuration in "own fine-tunes vs published".
"""

from __future__ import annotations

import dataclasses
import html
import os
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from augreg_nb import figures, names
from augreg_nb.figures.registry import FIGURES
from augreg_nb.figures.synthetic import paper_index
from augreg_nb.widgets.common import MessageArea, message_html, show_figure
from augreg_nb.widgets.finetune_panel import read_results

#: Item -> label in the picker: every entry of the figure registry.
ITEMS: dict[str, str] = {key: e.label for key, e in FIGURES.items()}
SOURCES = {"paper": "paper tables (shipped)", "index": "full index table"}
#: Items that need a full index table.
NEEDS_INDEX = tuple(key for key, e in FIGURES.items() if e.needs_index)
#: Figures that draw own ImageNet results as an overlay.
OVERLAY_ITEMS = tuple(key for key, e in FIGURES.items() if e.overlay and e.kind == "figure")


@dataclasses.dataclass
class Rendered:
    """What the picker shows for one choice."""

    item: str
    figure: Any = None  #: a matplotlib Figure, or None
    html: str = ""  #: an HTML table, or ""
    caption: str = ""
    note: str = ""  #: why something is not shown / what was overlaid


def _is_catalogue(index: pd.DataFrame) -> bool:
    return (index.attrs.get("provenance") or {}).get("kind") == "catalogue"


def render(
    item: str,
    *,
    source: str = "paper",
    index: pd.DataFrame | None = None,
    highlight=None,
    own: pd.DataFrame | None = None,
    only_differences: bool = False,
) -> Rendered:
    """The figure or table ``item`` from ``source`` with ``highlight`` models marked and
    ``own`` result rows overlaid where the item supports it; ``only_differences``: the
    comparison lists only the numbers that differ from the paper. Raises ValueError with the fix
    when the choice cannot be drawn (e.g. Figure 1 without a full index)."""
    if item not in ITEMS:
        raise ValueError(f"unknown item {item!r}; choose one of {list(ITEMS)}")
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; choose 'paper' or 'index'")
    highlight = [highlight] if isinstance(highlight, str) else list(highlight or [])
    own = own if own is not None and len(own) else None
    data = None
    if source == "index" or item in NEEDS_INDEX:
        if index is None or _is_catalogue(index):
            what = "the loaded table is the shipped catalogue (a few published rows)" \
                if index is not None else "no index table was loaded"
            # Only a choice that can be drawn from the paper's tables is told to use them.
            other = ("choose another figure: this one needs the full index, the paper "
                     "prints no table of its numbers" if item in NEEDS_INDEX else
                     "choose the paper tables as the data source")
            raise ValueError(
                f"{ITEMS[item]} from the full index: {what}. Point the notebook at your copy "
                "of index.csv (parameter INDEX, or the AUGREG_NB_INDEX environment variable), "
                f"or {other}"
            )
        data = index
    entry = FIGURES[item]
    out = Rendered(item, caption=figures.CAPTIONS.get(item, ITEMS[item]))
    if entry.kind == "table":
        out.html = entry.plot(entry.data(data), highlight=highlight).to_html()
        if item == "table5" and data is not None:
            out.note = "Table 5 always shows the paper's numbers: the index holds no VTAB runs."
    elif entry.kind == "comparison":
        table = entry.data(data)
        differ = int(table["differs"].sum())
        out.caption = (f"{differ} of {len(table)} numbers differ from the paper beyond its "
                       "rounding (shaded).")
        if only_differences:
            table = table[table["differs"].astype(bool)]
            out.caption += f" Showing only those {differ}."
        out.html = scrolling(entry.plot(table).to_html())
    elif entry.kind == "own":
        if own is None:
            raise ValueError("no own results yet: fine-tune in notebook 2 (02_finetune) and "
                             "press Export result; its rows are read from the results CSV")
        comparison = entry.data(own)
        out.figure = entry.plot(comparison, highlight=highlight)
        out.html = scrolling(comparison.to_html(index=False, na_rep="-",
                                                float_format=lambda v: f"{v:.2f}"))
        unknown = int(comparison["published_test"].isna().sum())
        if unknown:
            out.note = (f"{unknown} own run(s) have no published counterpart (no published row "
                        "with the same checkpoint, task, steps, learning rate and resolution).")
    else:
        kwargs: dict[str, Any] = {"highlight": highlight}
        if item in OVERLAY_ITEMS and own is not None:
            kwargs["overlay"] = own
            n = int((own["adapt_ds"] == "imagenet2012").sum())
            out.note = (f"{n} own ImageNet fine-tune(s) drawn as black stars." if n else
                        "Own results hold no ImageNet (imagenet2012) fine-tunes to draw here.")
        out.figure = entry.plot(entry.data(data), **kwargs)
    if data is not None and data.attrs.get("synthetic"):
        out.caption = (f"{SYNTHETIC_NOTE} {out.caption}")
    return out


#: Said on screen whenever the "full index" is smoke mode's table made from the paper.
SYNTHETIC_NOTE = ("Built from the paper's own numbers (smoke mode's stand-in for the full "
                  "index), not from a published index.csv.")


def scrolling(html_text: str, max_height: str = "32em") -> str:
    """``html_text`` in a box of at most ``max_height`` that scrolls (long tables)."""
    return (f"<div class='augreg-scroll' style='max-height:{max_height};overflow:auto;"
            f"max-width:100%'>{html_text}</div>")


class FigurePicker:
    """Pick a figure or table, the data source, models to highlight and own results."""

    def __init__(self, index: pd.DataFrame | None = None, *,
                 results_csv: str | os.PathLike | None = None, item: str = "fig4",
                 source: str = "paper", highlight=()):
        self.index = index
        self.results_csv = Path(results_csv) if results_csv is not None else None
        self.shown: Rendered | None = None
        self.messages = MessageArea()
        self.item = w.Dropdown(options=[(v, k) for k, v in ITEMS.items()], value=item,
                               description="Show", layout=w.Layout(width="32em"))
        self.source = w.ToggleButtons(options=[(v, k) for k, v in SOURCES.items()],
                                      value=source, description="Data",
                                      style={"button_width": "auto"})
        if isinstance(highlight, str):
            highlight = [m.strip() for m in highlight.split(",") if m.strip()]
        highlight = tuple(names.normalize_model(m) for m in highlight)
        self.highlight = w.SelectMultiple(options=list(names.MODELS), value=highlight,
                                          description="Highlight", rows=5)
        self.overlay = w.Checkbox(value=True, description="overlay own results", indent=False)
        self.reload_button = w.Button(description="Reload own results", icon="refresh",
                                      layout=w.Layout(width="auto"))
        self.only_differences = w.Checkbox(value=True, indent=False,
                                           description="comparison: only differences")
        self.own_status = w.HTML()
        self.caption = w.HTML()
        self.output = w.Output(layout=w.Layout(max_width="100%", overflow="auto"))
        for widget in (self.item, self.source, self.highlight, self.overlay,
                       self.only_differences):
            widget.observe(self._on_change, names="value")
        self.reload_button.on_click(self._on_reload)
        wrap = w.Layout(flex_flow="row wrap", max_width="100%")
        self.widget = w.VBox([
            w.HBox([self.item, self.source], layout=wrap),
            w.HBox([self.highlight, w.VBox([self.overlay, self.reload_button,
                                            self.only_differences, self.own_status])],
                   layout=wrap),
            self.messages.widget, self.caption, self.output,
        ], layout=w.Layout(max_width="100%"))
        self.refresh()

    @classmethod
    def for_session(cls, session, **kwargs) -> FigurePicker:
        """The picker for a notebook :class:`~augreg_nb.notebook.Session`: its index table
        and own results. In smoke mode the "full index" is the synthetic table built from
        the paper's numbers (:func:`augreg_nb.figures.synthetic.paper_index`), marked so."""
        index = session.index
        if session.smoke:
            index = paper_index().copy()
            index.attrs["synthetic"] = True
            index.attrs["provenance"] = {
                "source": "synthetic table built from the paper's numbers (smoke mode)",
                "kind": "synthetic", "complete": False}
        return cls(index, results_csv=session.results_csv, **kwargs)

    def own_results(self) -> pd.DataFrame | None:
        """Own result rows from ``results_csv`` (None when off or there are none)."""
        if not self.overlay.value or self.results_csv is None:
            return None

        rows = read_results(self.results_csv)
        self.own_status.value = (f"<small>{len(rows)} own result row(s) read from "
                                 f"{html.escape(str(self.results_csv))}</small>")
        return rows if len(rows) else None

    def _on_reload(self, _button=None) -> None:
        self.refresh()

    def _on_change(self, _change=None) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Draw the current choice (errors become a message, the output is cleared)."""
        self.messages.clear()
        self.output.clear_output()
        self.caption.value = ""
        try:
            shown = render(self.item.value, source=self.source.value, index=self.index,
                           highlight=self.highlight.value, own=self.own_results(),
                           only_differences=self.only_differences.value)
        except Exception as err:  # shown as a message, never a traceback
            self.shown = None
            self.messages.error(err, f"Drawing {ITEMS[self.item.value]}")
            return
        self.shown = shown
        caption = shown.caption + (f"\n{shown.note}" if shown.note else "")
        self.caption.value = message_html(caption, "note")
        with self.output:
            from IPython.display import HTML, display

            if shown.figure is not None:
                show_figure(shown.figure)
            if shown.html:
                display(HTML(shown.html))

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
