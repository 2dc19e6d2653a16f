"""The index browser of notebook 1: filter, sort and fetch AugReg checkpoints.

The pure functions compute everything the browser shows, so they can be used (and tested)
without a browser::

    from augreg_nb import index
    from augreg_nb.widgets.index_browser import IndexBrowser, browse

    df = index.load_index()
    view = browse(df, {"model": "R26+S/32", "aug": "light1", "task": "oxford_iiit_pet"},
                  sort_by="fine-tuned val accuracy")
    view.table        # what the table shows; view.files: the checkpoint of each row

    browser = IndexBrowser(df)        # the widget; display it in a notebook cell
    browser.filters["model"].value = "B/16"       # the table follows every change
    browser.headers["test acc"].click()           # sort by a column; a second click reverses
    browser.selection.value = view.files[2]       # what clicking the third row does
    browser.fetch_button.click()                  # downloads the selected file, with progress

Above the table a row of header buttons, named after the table's columns, sets the sort: a
click sorts by that column, a second click on the same header reverses the order
(:func:`sort_after_click`); each view (fine-tunes, upstream checkpoints) keeps its own sort.
A click on a table row selects it, and so does a click on its line in the list box below
(:func:`row_labels`), which the table's rows drive. Checkpoint names take at most two lines of the
table (one click on a name selects all of it for copying, the tooltip shows it whole), and
the selected row's full name stands in the *Selected* field, ready to copy.

Augmentation is shown with the paper's names (``light1``, ``light2``, ...) next to the index
name the table and filenames use (``light0``, ``light1``, ...); filter values are the index
names (``aug``) or, under the key ``aug_paper``, the paper names. The recommended upstream
checkpoint of each model (:func:`augreg_nb.index.recommended_checkpoints`) is marked ★.
Nothing downloads until the Fetch button is pressed.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ipywidgets as w
import numpy as np
import pandas as pd

from augreg_nb import index as index_lib
from augreg_nb import index_queries, names
from augreg_nb.config import SMOKE_MODEL
from augreg_nb.sources import bucket_url, resolve_checkpoint
from augreg_nb.widgets.common import (
    ANY,
    FULL_WIDTH,
    MessageArea,
    attempt_reporter,
    dropdown,
    guarded,
    message_html,
    run_in_output,
    set_options,
    table_html,
)

#: Filter key -> (label, index column); ``reg`` filters dropout (``do``) and stochastic depth
#: (``sd``) together.
FILTERS: dict[str, tuple[str, str]] = {
    "model": ("Model", "name"),
    "ds": ("Pre-training", "ds"),
    "aug": ("Augmentation", "aug"),
    "wd": ("Weight decay", "wd"),
    "reg": ("Regularisation", "do"),
    "task": ("Task", "adapt_ds"),
    "resolution": ("Resolution", "adapt_resolution"),
    "lr": ("Fine-tune lr", "adapt_lr"),
    "steps": ("Steps", "adapt_steps"),
}
DS_LABELS = {"i1k": "ImageNet-1k, 300 ep", "i21k": "ImageNet-21k, 300 ep",
             "i21k_30": "ImageNet-21k, 30 ep"}
VIEWS = ("fine-tunes", "upstream checkpoints")
#: Sort choices: label -> index column ("model" sorts in the paper's model order).
SORTS: dict[str, str] = {
    "fine-tuned val accuracy": "adapt_final_val",
    "fine-tuned test accuracy": "adapt_final_test",
    "upstream val accuracy": "final_val",
    "inference speed": "infer_samples_per_sec",
    "parameters": "params",
    "model": "_model_order",
}
UPSTREAM_SORTS = ("upstream val accuracy", "model")
#: Header button label (the table's column name where it has one) -> sort choice.
HEADERS: dict[str, str] = {
    "model": "model",
    "val acc": "fine-tuned val accuracy",
    "test acc": "fine-tuned test accuracy",
    "upstream val": "upstream val accuracy",
    "img/s": "inference speed",
    "params": "parameters",
}
#: CSS class of the row list (its lines are cut at the list's edge, never scrolled sideways).
ROWS_CLASS = "augreg-rows"
#: CSS class of the whole browser: a table row's click finds its row list inside it.
BROWSER_CLASS = "augreg-browser"
#: What a click on a table row runs in the browser: select the same row in the row list and
#: tell its widget, as a click on the list's line does (the kernel then outlines the row).
#: Where a front end drops inline scripts, the row list still selects.
ROW_CLICK = (f"var s=this.closest('.{BROWSER_CLASS}');s=s&&s.querySelector('.{ROWS_CLASS} "
             "select');if(s&&s.selectedIndex!=={row}){s.selectedIndex={row};"
             "s.dispatchEvent(new Event('change',{bubbles:true}))}")
#: Lines a checkpoint name may take in the table; the table's and the row list's heights.
NAME_LINES = 2
TABLE_HEIGHT = "34em"
LIST_ROWS = 12
#: Sorts whose first click orders ascending (the paper's model order); the others put the
#: largest value (best accuracy, fastest, biggest) first.
ASCENDING_FIRST = ("model",)
KINDS = ("upstream", "fine-tuned")


def reg_key(do: float, sd: float) -> str:
    """Value of the regularisation filter for dropout ``do`` and stochastic depth ``sd``."""
    return f"do={float(do):g}, sd={float(sd):g}"


def _reg_label(key: str) -> str:
    return "none" if key == reg_key(0, 0) else key.replace("do=", "dropout ").replace(
        "sd=", "stoch. depth ")


def _aug_label(aug: str) -> str:
    paper = names.index_to_paper_aug(aug)
    return paper if paper == aug else f"{paper} (index: {aug})"


def _present(df: pd.DataFrame, col: str) -> list:
    values = pd.unique(df[col].dropna().to_numpy())
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def filter_options(df: pd.DataFrame) -> dict[str, list[tuple[str, Any]]]:
    """For each filter: the (label, value) choices present in ``df``, ``(any)`` first."""
    opts: dict[str, list[tuple[str, Any]]] = {}
    models = set(df["name"].dropna().unique())
    opts["model"] = [(m, m) for m in names.MODELS if m in models]
    ds = set(df["ds"].dropna().unique())
    opts["ds"] = [(f"{d} ({DS_LABELS[d]})", d) for d in names.PRETRAIN_DATASETS if d in ds]
    augs = set(df["aug"].dropna().unique())
    opts["aug"] = [(_aug_label(a), a) for a in names.AUG_NAMES if a in augs]
    opts["wd"] = [(f"{v:g}", float(v)) for v in _present(df, "wd")]
    pairs = df[["do", "sd"]].dropna().drop_duplicates()  # a handful of rows, not 51,509
    regs = sorted({reg_key(d, s) for d, s in pairs.itertuples(index=False)})
    opts["reg"] = [(_reg_label(k), k) for k in regs]
    opts["task"] = [(t, t) for t in _present(df, "adapt_ds")]
    opts["resolution"] = [(f"{int(v)} px", int(v)) for v in _present(df, "adapt_resolution")]
    opts["lr"] = [(f"{v:g}", float(v)) for v in _present(df, "adapt_lr")]
    opts["steps"] = [(f"{int(v):,}", int(v)) for v in _present(df, "adapt_steps")]
    return {k: [(ANY, ANY), *v] for k, v in opts.items()}


def criteria_from_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Turn filter values into :func:`augreg_nb.index.filter_index` criteria.

    ``(any)``/None/empty values are dropped; ``reg`` becomes ``do`` and ``sd``; ``aug``
    takes index names and ``aug_paper`` paper names; unknown keys raise ValueError.
    """
    out: dict[str, Any] = {}
    for key, value in state.items():
        if value is None or value == ANY or (isinstance(value, (list, tuple)) and not value):
            continue
        if key == "reg":
            values = value if isinstance(value, (list, tuple)) else [value]
            parsed = [_parse_reg(v) for v in values]
            if len(parsed) == 1:
                out["do"], out["sd"] = parsed[0]
            else:
                out["do"] = sorted({p[0] for p in parsed})
                out["sd"] = sorted({p[1] for p in parsed})
        elif key == "lr":
            out["adapt_lr"] = value
        elif key in FILTERS or key == "aug_paper":
            out[key] = value
        else:
            raise ValueError(f"unknown filter {key!r}; use one of {[*FILTERS, 'aug_paper']}")
    return out


def _parse_reg(value: Any) -> tuple[float, float]:
    if isinstance(value, tuple) and len(value) == 2:
        return float(value[0]), float(value[1])
    text = str(value).strip()
    if text == "none":
        return 0.0, 0.0
    try:
        parts = dict(p.strip().split("=") for p in text.split(","))
        return float(parts["do"]), float(parts["sd"])
    except (ValueError, KeyError):
        raise ValueError(
            f"regularisation filter {value!r}: write it as 'do=0.1, sd=0.1' (dropout and "
            "stochastic depth) or 'none'"
        ) from None


#: Marks in the table's first column: one meaning each.
MARK_RECOMMENDED = "★"  #: the recommended upstream checkpoint of its model
MARK_FINETUNE_OF_RECOMMENDED = "☆"  #: a fine-tune of a recommended upstream checkpoint
#: Sorts whose numbers are only comparable within one task (rows are grouped by task then).
PER_TASK_SORTS = ("fine-tuned val accuracy", "fine-tuned test accuracy")


@dataclasses.dataclass
class BrowserView:
    """What the browser shows for one state."""

    table: pd.DataFrame  #: the rows shown, display columns
    files: list[str]  #: checkpoint filename of each shown row (upstream or fine-tuned)
    upstreams: list[str]  #: upstream filename of each shown row
    marked: list[bool]  #: row's upstream is the recommended one of its model
    matching: int  #: rows (or upstream checkpoints) matching the filters
    total: int  #: rows (or upstream checkpoints) in the table
    fetchable: list[bool] = dataclasses.field(default_factory=list)  #: per shown row
    #: rows matching the filters before "can be fetched now" dropped the others
    matching_any_source: int = 0
    grouped_by_task: bool = False  #: accuracies ranked within each task, tasks in turn


def availability_labels(df: pd.DataFrame, *, kind: str = "fine-tuned",
                        access: str | None = None,
                        bucket_files: set[str] | None = None) -> dict[str, str]:
    """Filename -> where it can be obtained by this user now: ``local``
    (``$AUGREG_NB_CHECKPOINT_DIR``), ``cached``, ``HF mirror (free)`` (timm's copy on the
    Hugging Face Hub), ``bucket`` (a bucket that serves it), ``bucket: needs access`` (the
    public bucket, which refuses anonymous reads); see :func:`augreg_nb.index_queries.
    availability`."""
    avail = _availability(df, kind, access, bucket_files)
    return dict(zip(avail["filename"], avail["where"], strict=True))


def _availability(df, kind, access, bucket_files, hf_mirror=True) -> pd.DataFrame:
    avail = index_queries.availability(df, include_upstream=kind == "upstream",
                                       access=access, bucket_files=bucket_files,
                                       hf_mirror=hf_mirror)
    return avail[(avail["kind"] == kind).to_numpy()]


def _task_order(rows: pd.DataFrame) -> pd.Series:
    order = {t: i for i, t in enumerate(names.ADAPT_DATASETS)}
    return rows["adapt_ds"].astype(object).map(order).fillna(len(order))


def browse(
    df: pd.DataFrame,
    state: Mapping[str, Any] | None = None,
    *,
    view: str = VIEWS[0],
    sort_by: str = "fine-tuned val accuracy",
    descending: bool = True,
    limit: int = 25,
    recommended: set[str] | None = None,
    fetchable_only: bool = False,
    access: str | None = None,
    bucket_files: set[str] | None = None,
    hf_mirror: bool = True,
) -> BrowserView:
    """The browser's table for ``state`` (filter key -> value), sorted and cut to ``limit``.

    ``recommended``: upstream filenames to mark (default: the recommended checkpoints).
    ``fetchable_only``: keep the rows this user can fetch now (``access`` and
    ``bucket_files``, ``hf_mirror`` as in :func:`augreg_nb.index_queries.availability`). Fine-tuned
    accuracies of different tasks are never ranked against each other: with no task filter
    the rows are grouped by task and ranked within each, every task getting its share of
    ``limit``.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
    if sort_by not in SORTS:
        raise ValueError(f"sort_by must be one of {list(SORTS)}, not {sort_by!r}")
    if recommended is None:
        recommended = recommended_files(df)
    access = index_queries.bucket_access() if access is None else access
    rows = index_lib.filter_index(df, **criteria_from_state(state or {}))
    upstream = view == VIEWS[1]
    kind = "upstream" if upstream else "fine-tuned"
    if upstream:
        counts = rows.groupby(rows["filename"].astype(object), sort=False).size()
        rows = rows.drop_duplicates("filename")
        total = int(df["filename"].nunique())
        if sort_by not in UPSTREAM_SORTS:
            sort_by = "upstream val accuracy"
    else:
        total = len(df)
    matching_any = len(rows)
    avail = _availability(rows, kind, access, bucket_files, hf_mirror)
    can = avail["fetchable"].to_numpy(dtype=bool)
    where_all = avail["where"].to_numpy()
    if fetchable_only:
        rows, can, where_all = rows.iloc[np.flatnonzero(can)], can[can], where_all[can]
    rows = rows.assign(_fetchable=can, _where=where_all)
    matching = len(rows)
    order = {m: i for i, m in enumerate(names.MODELS)}
    key = SORTS[sort_by]
    if key == "_model_order":
        rows = rows.assign(_model_order=rows["name"].astype(object).map(order))
    rows = index_lib.sort_checkpoints(rows, key, ascending=not descending)
    grouped = (not upstream and sort_by in PER_TASK_SORTS
               and rows["adapt_ds"].astype(object).nunique() > 1)
    if grouped:
        tasks = _task_order(rows)
        share = max(3, -(-limit // max(1, tasks.nunique())))
        rank = rows.groupby(tasks.to_numpy(), sort=False).cumcount().to_numpy()
        rows = rows.iloc[np.flatnonzero(rank < share)]
        rows = rows.assign(_task=_task_order(rows)).sort_values("_task", kind="stable")
    rows = rows.head(limit)
    ups = rows["filename"].astype(object).tolist()
    files = ups if upstream else rows["adapt_filename"].astype(object).tolist()
    marked = [u in recommended for u in ups]
    mark = MARK_RECOMMENDED if upstream else MARK_FINETUNE_OF_RECOMMENDED
    table = pd.DataFrame({
        "rec.": [mark if m else "" for m in marked],
        "model": rows["name"].astype(object).to_numpy(),
        "pre-training": rows["ds"].astype(object).to_numpy(),
        "aug (paper)": [names.index_to_paper_aug(a) for a in rows["aug"].astype(object)],
        "wd": rows["wd"].to_numpy(),
        "do/sd": [f"{d:g}/{s:g}" for d, s in zip(rows["do"], rows["sd"], strict=True)],
    })
    if upstream:
        table["upstream val"] = rows["final_val"].to_numpy()
        table["fine-tunes listed"] = [int(counts.get(u, 0)) for u in ups]
    else:
        table["task"] = rows["adapt_ds"].astype(object).to_numpy()
        table["res"] = _ints(rows["adapt_resolution"])
        table["lr"] = rows["adapt_lr"].to_numpy()
        table["steps"] = _ints(rows["adapt_steps"])
        table["val acc"] = rows["adapt_final_val"].to_numpy()
        table["test acc"] = rows["adapt_final_test"].to_numpy()
    table["available"] = rows["_where"].to_numpy()
    table["checkpoint"] = files
    return BrowserView(table, files, ups, marked, matching, total,
                       fetchable=rows["_fetchable"].astype(bool).tolist(),
                       matching_any_source=matching_any, grouped_by_task=grouped)


def _bucket_url() -> str:
    return bucket_url()


def _ints(s: pd.Series) -> list:
    return ["" if pd.isna(v) else int(v) for v in s]


def recommended_files(df: pd.DataFrame) -> set[str]:
    """Upstream filenames of the recommended checkpoint per model (empty if none apply)."""
    try:
        rec = index_lib.recommended_checkpoints(df)
    except ValueError:
        return set()
    return set(rec["filename"].astype(object))


def header_labels(view: str = VIEWS[0]) -> list[str]:
    """The header buttons shown for ``view``: the sorts it allows, as column names."""
    allowed = UPSTREAM_SORTS if view == VIEWS[1] else tuple(SORTS)
    return [label for label, sort in HEADERS.items() if sort in allowed]


def sort_after_click(sort_by: str, descending: bool, clicked: str) -> tuple[str, bool]:
    """(sort, descending) after a click on header ``clicked`` (a key of HEADERS).

    Clicking the header of the current sort reverses its order; another header sorts by its
    column, ascending for the model order and largest first for every number.
    """
    if clicked not in HEADERS:
        raise ValueError(f"no header {clicked!r}; use one of {list(HEADERS)}")
    new = HEADERS[clicked]
    if new == sort_by:
        return sort_by, not descending
    return new, new not in ASCENDING_FIRST


def header_text(label: str, sort_by: str, descending: bool) -> str:
    """A header button's text: its column name, with ▼/▲ on the current sort's header."""
    if HEADERS[label] != sort_by:
        return label
    return f"{label} {'▼' if descending else '▲'}"


def row_labels(view: BrowserView) -> list[tuple[str, str]]:
    """(label, checkpoint) for each shown row, in table order: the list a click selects
    from. A label reads like the row (mark, number, model, task, accuracy, availability)
    and ends with the checkpoint's full name."""
    out = []
    cols = view.table.columns
    for i, (row, f) in enumerate(zip(view.table.itertuples(index=False), view.files,
                                     strict=True)):
        cells = dict(zip(cols, row, strict=True))
        parts = [f"{cells['rec.'] or ' '} {i + 1:>2}.", str(cells["model"])]
        if "task" in cells:
            parts.append(f"{cells['task']} {cells['res']}px")
            acc = cells["val acc"]
            parts.append("val " + ("n/a" if pd.isna(acc) else f"{float(acc):.1%}"))
        else:
            acc = cells["upstream val"]
            parts.append("upstream val " + ("n/a" if pd.isna(acc) else f"{float(acc):.1%}"))
        parts.append(str(cells["available"]))
        out.append((" · ".join(parts) + f" — {f}", f))
    return out


def _label(text: str) -> w.HTML:
    """A control's label, on the control's line."""
    return w.HTML(f"<b>{html.escape(text)}</b>", layout=w.Layout(margin="0 6px 0 0"))


def file_to_fetch(view: BrowserView, selected: str | None, kind: str) -> str:
    """The checkpoint a fetch downloads: the selected row's file, or its upstream."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if not selected or selected not in view.files:
        raise ValueError("select a checkpoint in the list first (the table is empty or "
                         "nothing is selected)")
    i = view.files.index(selected)
    return view.upstreams[i] if kind == "upstream" else view.files[i]


class IndexBrowser:
    """Filters, a sortable table, the provenance line and a fetch button over an index table.

    ``fetcher(name, progress=True, on_attempt=...)`` resolves a checkpoint name to a local
    file (default: :func:`augreg_nb.sources.resolve_checkpoint`, with its progress bar; while
    it runs, the panel says which source it is trying). ``bucket_files``:
    the only names the bucket serves (smoke mode's loopback bucket), else every name;
    ``hf_mirror=False``: the Hugging Face endpoint serves nothing (smoke mode).
    *can be fetched now* starts on whenever some rows cannot be fetched by this user
    (:func:`augreg_nb.index_queries.bucket_access` says the bucket refuses, or offline).
    """

    def __init__(self, df: pd.DataFrame, *, limit: int = 25,
                 state: Mapping[str, Any] | None = None,
                 fetcher: Callable[..., Any] | None = None,
                 bucket_files: Iterable[str] | None = None, hf_mirror: bool = True):
        self.df = df
        self.limit = limit
        self.recommended = recommended_files(df)
        self._fetcher = fetcher
        self.bucket_files = set(bucket_files) if bucket_files is not None else None
        self.hf_mirror = hf_mirror
        self.access = index_queries.bucket_access()
        self.last_fetch: Any = None
        self.messages = MessageArea()
        self.notices = MessageArea()  # parameters that could not be applied
        self.provenance = w.HTML(value=self._provenance_html())
        options = filter_options(df)
        state = dict(state or {})
        self.filters: dict[str, w.Dropdown] = {
            key: dropdown(FILTERS[key][0], options[key], state.get(key, ANY), width="auto")
            for key in FILTERS
        }
        self._report_unavailable(state, options)
        # Labels of the toggles are HTML beside them: a toggle's own description wraps above
        # its buttons in a row that wraps.
        self.view_toggle = w.ToggleButtons(options=list(VIEWS), value=VIEWS[0],
                                           tooltips=["fine-tuned checkpoints, one row each",
                                                     "pre-trained checkpoints, one row each"],
                                           style={"button_width": "auto"})
        # Each view keeps its sort: "upstream val" never carries into the fine-tunes.
        self._view_sorts: dict[str, tuple[str, bool]] = {
            VIEWS[0]: ("fine-tuned val accuracy", True), VIEWS[1]: (UPSTREAM_SORTS[0], True)}
        self._shown_view = VIEWS[0]
        # The sort state; the header buttons set it (they are what the browser shows).
        self.sort = dropdown("Sort by", list(SORTS), "fine-tuned val accuracy")
        self.descending = w.Checkbox(value=True, description="best first", indent=False,
                                     layout=w.Layout(width="auto"))
        self.headers: dict[str, w.Button] = {
            label: w.Button(description=label, tooltip=f"sort by {HEADERS[label]}; click "
                            "again to reverse", layout=w.Layout(width="auto"))
            for label in HEADERS
        }
        for label, button in self.headers.items():
            button.on_click(lambda _b, label=label: self._on_header(label))
        # The row list's long lines are cut at its edge (the table shows the full names):
        # a list box would otherwise scroll sideways.
        style = f"<style>.{ROWS_CLASS} select {{overflow-x:hidden}}</style>"
        self.header_bar = w.HBox([w.HTML(f"{style}<b>Sort by</b>&nbsp;"),
                                  *self.headers.values()],
                                 layout=w.Layout(flex_flow="row wrap", max_width="100%",
                                                 align_items="center"))
        restricted = (self.access not in (index_queries.BUCKET_OPEN,
                                          index_queries.BUCKET_CREDENTIALS)
                      or self.bucket_files is not None)
        self.fetchable_only = w.Checkbox(
            value=restricted, description="can be fetched now", indent=False,
            layout=w.Layout(width="auto"))
        self.access_note = w.HTML(value=self._access_html())
        self.count = w.HTML()
        self.table_html = w.HTML(layout=w.Layout(width=FULL_WIDTH))
        # One line per row of the table: clicking a line selects its checkpoint.
        self.selection = w.Select(options=[("", "")], value="", rows=5,
                                  description="Checkpoint",
                                  style={"description_width": "initial"},
                                  layout=w.Layout(width=FULL_WIDTH))
        self.selection.add_class(ROWS_CLASS)
        # The selected row's full name, to copy (an edit is undone: it is no input).
        self.copy = w.Text(value="", description="Selected",
                           style={"description_width": "initial"},
                           layout=w.Layout(width=FULL_WIDTH))
        self.copy.observe(self._on_copy_edit, names="value")
        self.kind = w.ToggleButtons(options=list(KINDS), value="fine-tuned",
                                    tooltips=["the upstream (pre-trained) checkpoint the "
                                              "selected row was fine-tuned from",
                                              "the selected row's fine-tuned checkpoint"],
                                    style={"button_width": "auto"})
        self.fetch_button = w.Button(description="Fetch checkpoint", icon="download",
                                     button_style="primary", layout=w.Layout(width="auto"),
                                     tooltip="download the selected checkpoint into the cache")
        self.status = w.HTML()  # what a running fetch is doing now
        self.progress = w.Output(layout=w.Layout(max_width="100%", overflow="hidden"))
        self.view: BrowserView | None = None
        self._refreshing = False
        for widget in (*self.filters.values(), self.view_toggle, self.sort, self.descending,
                       self.fetchable_only):
            widget.observe(self._on_change, names="value")
        self.kind.observe(self._on_change, names="value")
        self.selection.observe(self._on_select, names="value")
        self.fetch_button.on_click(self._on_fetch)
        wrap = w.Layout(flex_flow="row wrap", max_width="100%", align_items="center")
        # The filters in even columns (as many as fit), not rows that wrap unevenly.
        self.filter_grid = w.GridBox(list(self.filters.values()), layout=w.Layout(
            grid_template_columns="repeat(auto-fill, minmax(15em, 1fr))",
            grid_gap="2px 12px", width=FULL_WIDTH))
        self.widget = w.VBox([
            self.provenance,
            self.notices.widget,
            self.filter_grid,
            w.HBox([_label("Show"), self.view_toggle, self.fetchable_only], layout=wrap),
            self.access_note,
            self.count,
            self.header_bar,
            self.table_html,
            self.selection,
            self.copy,
            w.HBox([_label("File of the row"), self.kind, self.fetch_button], layout=wrap),
            self.status,
            self.progress,
            self.messages.widget,
        ], layout=w.Layout(max_width="100%"))
        self.widget.add_class(BROWSER_CLASS)
        self.refresh()

    @classmethod
    def for_session(cls, session, *, state: Mapping[str, Any] | None = None,
                    limit: int = 25) -> IndexBrowser:
        """The browser for a notebook :class:`~augreg_nb.notebook.Session`; in smoke mode
        the filters start at the model whose fake checkpoints the loopback bucket serves,
        and the bucket serves only those."""
        state = dict(state or {})
        served = None
        if session.smoke_env is not None:
            if state.get("model", ANY) == ANY:
                state["model"] = SMOKE_MODEL
            if state.get("task", ANY) == ANY:
                state["task"] = "imagenet2012"
            served = session.smoke_env.checkpoints
        return cls(session.index, state=state, limit=limit, bucket_files=served,
                   hf_mirror=served is None)

    # -- state ---------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        """Current filter values (``(any)`` for none)."""
        return {key: widget.value for key, widget in self.filters.items()}

    @property
    def table(self) -> pd.DataFrame:
        return self.view.table if self.view is not None else pd.DataFrame()

    @property
    def selected(self) -> str | None:
        return self.selection.value or None

    def _provenance_html(self) -> str:
        complete = index_lib.is_complete(self.df)
        return message_html(index_lib.describe_provenance(self.df),
                            "note" if complete else "warning", title="Data source")

    def _access_html(self) -> str:
        text = {
            index_queries.BUCKET_REFUSED: (
                "The bucket refuses anonymous downloads and no Google credentials were found: "
                "files marked 'bucket: needs access' cannot be fetched; the Hugging Face "
                "mirror (free) holds the recommended checkpoints and their ImageNet "
                "fine-tunes."),
            index_queries.BUCKET_CREDENTIALS: (
                "Google credentials were found: the bucket serves its files if they grant "
                "read access."),
            index_queries.OFFLINE: (
                "Offline mode: only local and cached files can be fetched."),
            index_queries.BUCKET_OPEN: (
                "Smoke mode: the loopback bucket serves only its fake checkpoints; the "
                "Hugging Face mirror is an empty loopback server."
                if self.bucket_files is not None else
                f"The bucket URL is set to {_bucket_url()}; its files are assumed to be "
                "there."),
        }[self.access]
        return f"<div style='color:#555;font-size:12px;line-height:1.35'>{html.escape(text)}</div>"

    def _report_unavailable(self, state: Mapping[str, Any], options) -> None:
        """Say which given filter values the table does not have (they fall back to any)."""
        problems = []
        for key, value in state.items():
            if key not in FILTERS or value in (None, ANY):
                continue
            values = [v for _, v in options[key]]
            if value not in values:
                have = ", ".join(str(v) for v in values[1:]) or "none"
                problems.append(f"{FILTERS[key][0]} = {value!r}: no such rows in this table "
                                f"(it has: {have}); showing {ANY} instead.")
        if problems:
            self.notices.show("\n".join(problems), "warning", title="Not available")

    # -- updates -------------------------------------------------------------------------
    def _on_change(self, change=None) -> None:
        if not self._refreshing:
            self.clear_result()
            self._switch_sort()
            self.refresh()

    def _switch_sort(self) -> None:
        """On a change of view: keep the old view's sort, restore the new one's."""
        view = self.view_toggle.value
        if view == self._shown_view:
            return
        self._view_sorts[self._shown_view] = (self.sort.value, self.descending.value)
        self._shown_view = view
        sort_by, descending = self._view_sorts[view]
        self._refreshing = True
        try:
            set_options(self.sort, list(UPSTREAM_SORTS) if view == VIEWS[1] else list(SORTS),
                        keep=sort_by)
            self.sort.value, self.descending.value = sort_by, descending
        finally:
            self._refreshing = False

    def _on_copy_edit(self, change=None) -> None:
        if self.copy.value != (self.selected or ""):
            self.copy.value = self.selected or ""

    def _on_header(self, label: str) -> None:
        sort_by, descending = sort_after_click(self.sort.value, self.descending.value, label)
        self._refreshing = True  # one refresh for both changes
        try:
            self.sort.value, self.descending.value = sort_by, descending
        finally:
            self._refreshing = False
        self._on_change()

    def _on_select(self, change=None) -> None:
        if not self._refreshing:
            self.clear_result()
            self._show_selected()

    def _show_selected(self) -> None:
        """Outline the selected row in the table; its full name goes in the copy field."""
        view = self.view
        self.copy.value = self.selected or ""
        if view is not None and len(view.table) and self.selected in view.files:
            self.table_html.value = self._table(view, view.files.index(self.selected))

    @staticmethod
    def _table(view: BrowserView, selected: int) -> str:
        return table_html(view.table, marked=view.marked, selected=selected,
                          wrap_columns=("available", "checkpoint"), clamp_lines=NAME_LINES,
                          max_height=TABLE_HEIGHT, row_click=ROW_CLICK)

    def clear_result(self) -> None:
        """Forget the last fetch's output: it belongs to a selection no longer shown."""
        self.progress.clear_output()
        self.status.value = ""
        self.messages.clear()

    def refresh(self) -> None:
        """Recompute the table from the widgets' values."""
        self._refreshing = True
        try:
            self._refresh()
        finally:
            self._refreshing = False

    def _refresh(self) -> None:
        upstream = self.view_toggle.value == VIEWS[1]
        sorts = list(UPSTREAM_SORTS) if upstream else list(SORTS)
        set_options(self.sort, sorts)
        self.kind.disabled = upstream
        try:
            view = browse(self.df, self.state, view=self.view_toggle.value,
                          sort_by=self.sort.value, descending=self.descending.value,
                          limit=self.limit, recommended=self.recommended,
                          fetchable_only=self.fetchable_only.value, access=self.access,
                          bucket_files=self.bucket_files, hf_mirror=self.hf_mirror)
        except ValueError as err:
            self.messages.error(err, "Filtering")
            return
        self.view = view
        what = "upstream checkpoints" if upstream else "rows"
        shown = len(view.table)
        # The table first, then the count line: whoever waits for the count sees the table.
        default = next((f for f, ok in zip(view.files, view.fetchable, strict=True) if ok),
                       view.files[0] if view.files else "")
        keep = self.selection.value if self.selection.value in view.files else default
        if shown:
            self.table_html.value = self._table(view, view.files.index(keep))
        elif self.fetchable_only.value and view.matching_any_source:
            self.table_html.value = (
                f"<i>None of the {view.matching_any_source:,} matching {what} can be fetched "
                "now; untick 'can be fetched now' to see them.</i>")
        else:
            self.table_html.value = "<i>No checkpoint matches these filters; set one to (any).</i>"
        parts = [f"<b>{view.matching:,}</b> of {view.total:,} {what} match"]
        if self.fetchable_only.value and view.matching < view.matching_any_source:
            parts.append(f"{view.matching_any_source - view.matching:,} more need access "
                         "(untick 'can be fetched now')")
        if shown < view.matching:
            parts.append(f"showing {shown}")
        if view.grouped_by_task:
            order = "best first" if self.descending.value else "lowest first"
            parts.append(f"grouped by task, {order} within each (accuracies of different "
                         "tasks are not comparable)")
        if any(view.marked):
            parts.append(f"{MARK_RECOMMENDED} = recommended upstream checkpoint of its model"
                         if upstream else
                         f"{MARK_FINETUNE_OF_RECOMMENDED} = fine-tune of a recommended "
                         f"upstream checkpoint")
        self.count.value = "; ".join(parts)
        labels = row_labels(view)
        set_options(self.selection, labels or [("", "")], keep=keep or "")
        self.selection.rows = max(2, min(len(labels), LIST_ROWS))
        self.copy.value = self.selection.value or ""
        shown_headers = header_labels(self.view_toggle.value)
        for label, button in self.headers.items():
            button.layout.display = None if label in shown_headers else "none"
            button.description = header_text(label, self.sort.value, self.descending.value)
            button.button_style = "info" if HEADERS[label] == self.sort.value else ""

    # -- fetching ------------------------------------------------------------------------
    def _fetch(self, name: str):
        on_attempt = attempt_reporter(self.status)
        if self._fetcher is not None:
            return self._fetcher(name, progress=True, on_attempt=on_attempt)

        return resolve_checkpoint(name, progress=True, on_attempt=on_attempt)

    def _on_fetch(self, _button=None) -> None:
        @guarded(self.messages, "Fetching the checkpoint")
        def run():
            assert self.view is not None
            kind = "upstream" if self.view_toggle.value == VIEWS[1] else self.kind.value
            name = file_to_fetch(self.view, self.selected, kind)
            self.messages.show(f"fetching {name} ...", "note")
            self.fetch_button.disabled = True
            try:
                self.progress.clear_output()
                resolved = run_in_output(self.progress, self._fetch, name)
            finally:
                self.fetch_button.disabled = False
                self.status.value = ""
            self.last_fetch = resolved
            size = resolved.path.stat().st_size / 2**20
            self.messages.show(
                f"{name}\nis ready: {resolved.path} ({size:.1f} MiB, from {resolved.source}, "
                f"layout {resolved.layout})", "info", title="Fetched")
            self.refresh()

        run()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

