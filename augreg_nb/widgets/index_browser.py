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
    browser.fetch_button.click()                  # downloads the selected file, with progress

Augmentation is shown with the paper's names (``light1``, ``light2``, ...) next to the index
name the table and filenames use (``light0``, ``light1``, ...); filter values are the index
names (``aug``) or, under the key ``aug_paper``, the paper names. The recommended upstream
checkpoint of each model (:func:`augreg_nb.index.recommended_checkpoints`) is marked ★.
Nothing downloads until the Fetch button is pressed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w
import pandas as pd

from augreg_nb import index as index_lib
from augreg_nb import names
from augreg_nb.notebook import SMOKE_MODEL
from augreg_nb.sources import resolve_checkpoint
from augreg_nb.widgets.common import (
    ANY,
    MessageArea,
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


@dataclasses.dataclass
class BrowserView:
    """What the browser shows for one state."""

    table: pd.DataFrame  #: the rows shown, display columns
    files: list[str]  #: checkpoint filename of each shown row (upstream or fine-tuned)
    upstreams: list[str]  #: upstream filename of each shown row
    marked: list[bool]  #: row's upstream is the recommended one of its model
    matching: int  #: rows (or upstream checkpoints) matching the filters
    total: int  #: rows (or upstream checkpoints) in the table


def availability_labels(df: pd.DataFrame, *, kind: str = "fine-tuned") -> dict[str, str]:
    """Filename -> where it can be obtained: ``local`` (cache or checkpoint folder),
    ``HF mirror`` (timm's copy on the Hugging Face Hub), ``bucket`` (the public bucket,
    which may refuse anonymous reads)."""
    avail = index_lib.availability(df, include_upstream=kind == "upstream")
    avail = avail[avail["kind"] == kind]
    labels = {}
    for row in avail.itertuples(index=False):
        parts = []
        if row.local_path:
            parts.append("local")
        if row.hf_repo:
            parts.append("HF mirror")
        parts.append("bucket")
        labels[row.filename] = " · ".join(parts)
    return labels


def browse(
    df: pd.DataFrame,
    state: Mapping[str, Any] | None = None,
    *,
    view: str = VIEWS[0],
    sort_by: str = "fine-tuned val accuracy",
    descending: bool = True,
    limit: int = 25,
    recommended: set[str] | None = None,
) -> BrowserView:
    """The browser's table for ``state`` (filter key -> value), sorted and cut to ``limit``.

    ``recommended``: upstream filenames to mark (default: the recommended checkpoints).
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
    if sort_by not in SORTS:
        raise ValueError(f"sort_by must be one of {list(SORTS)}, not {sort_by!r}")
    if recommended is None:
        recommended = recommended_files(df)
    rows = index_lib.filter_index(df, **criteria_from_state(state or {}))
    upstream = view == VIEWS[1]
    if upstream:
        counts = rows.groupby(rows["filename"].astype(object), sort=False).size()
        rows = rows.drop_duplicates("filename")
        total = int(df["filename"].nunique())
        if sort_by not in UPSTREAM_SORTS:
            sort_by = "upstream val accuracy"
    else:
        total = len(df)
    matching = len(rows)
    order = {m: i for i, m in enumerate(names.MODELS)}
    key = SORTS[sort_by]
    if key == "_model_order":
        rows = rows.assign(_model_order=rows["name"].astype(object).map(order))
    rows = index_lib.sort_checkpoints(rows, key, ascending=not descending).head(limit)
    ups = rows["filename"].astype(object).tolist()
    files = ups if upstream else rows["adapt_filename"].astype(object).tolist()
    where = availability_labels(rows, kind="upstream" if upstream else "fine-tuned")
    marked = [u in recommended for u in ups]
    table = pd.DataFrame({
        "★": ["★" if m else "" for m in marked],
        "model": rows["name"].astype(object).to_numpy(),
        "pre-training": rows["ds"].astype(object).to_numpy(),
        "aug (paper)": [names.index_to_paper_aug(a) for a in rows["aug"].astype(object)],
        "aug (index)": rows["aug"].astype(object).to_numpy(),
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
    table["available"] = [where.get(f, "bucket") for f in files]
    table["checkpoint"] = files
    return BrowserView(table, files, ups, marked, matching, total)


def _ints(s: pd.Series) -> list:
    return ["" if pd.isna(v) else int(v) for v in s]


def recommended_files(df: pd.DataFrame) -> set[str]:
    """Upstream filenames of the recommended checkpoint per model (empty if none apply)."""
    try:
        rec = index_lib.recommended_checkpoints(df)
    except ValueError:
        return set()
    return set(rec["filename"].astype(object))


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

    ``fetcher(name, progress=True)`` resolves a checkpoint name to a local file (default:
    :func:`augreg_nb.sources.resolve_checkpoint`, with its progress bar).
    """

    def __init__(self, df: pd.DataFrame, *, limit: int = 25,
                 state: Mapping[str, Any] | None = None,
                 fetcher: Callable[..., Any] | None = None):
        self.df = df
        self.limit = limit
        self.recommended = recommended_files(df)
        self._fetcher = fetcher
        self.last_fetch: Any = None
        self.messages = MessageArea()
        self.provenance = w.HTML(value=self._provenance_html())
        options = filter_options(df)
        state = dict(state or {})
        self.filters: dict[str, w.Dropdown] = {
            key: dropdown(FILTERS[key][0], options[key], state.get(key, ANY))
            for key in FILTERS
        }
        self.view_toggle = w.ToggleButtons(options=list(VIEWS), value=VIEWS[0],
                                           description="Show", style={"button_width": "auto"})
        self.sort = dropdown("Sort by", list(SORTS), "fine-tuned val accuracy")
        self.descending = w.Checkbox(value=True, description="best first", indent=False,
                                     layout=w.Layout(width="auto"))
        self.count = w.HTML()
        self.table_html = w.HTML()
        self.selection = dropdown("Checkpoint", [("", "")], "", width="100%")
        self.kind = w.ToggleButtons(options=list(KINDS), value="fine-tuned",
                                    description="Fetch", style={"button_width": "auto"})
        self.fetch_button = w.Button(description="Fetch", icon="download",
                                     button_style="primary",
                                     tooltip="download the selected checkpoint into the cache")
        self.progress = w.Output()
        self.view: BrowserView | None = None
        self._refreshing = False
        for widget in (*self.filters.values(), self.view_toggle, self.sort, self.descending):
            widget.observe(self._on_change, names="value")
        self.fetch_button.on_click(self._on_fetch)
        self.widget = w.VBox([
            self.provenance,
            w.HBox(list(self.filters.values())[:5], layout=w.Layout(flex_flow="row wrap")),
            w.HBox(list(self.filters.values())[5:], layout=w.Layout(flex_flow="row wrap")),
            w.HBox([self.view_toggle, self.sort, self.descending],
                   layout=w.Layout(flex_flow="row wrap")),
            self.count,
            self.table_html,
            self.selection,
            w.HBox([self.kind, self.fetch_button]),
            self.progress,
            self.messages.widget,
        ])
        self.refresh()

    @classmethod
    def for_session(cls, session, *, state: Mapping[str, Any] | None = None,
                    limit: int = 25) -> IndexBrowser:
        """The browser for a notebook :class:`~augreg_nb.notebook.Session`; in smoke mode
        the filters start at the model whose fake checkpoints the loopback bucket serves."""
        state = dict(state or {})
        if session.smoke_env is not None:
            state.update(model=SMOKE_MODEL, task="imagenet2012")
        return cls(session.index, state=state, limit=limit)

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

    # -- updates -------------------------------------------------------------------------
    def _on_change(self, change=None) -> None:
        if not self._refreshing:
            self.refresh()

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
                          limit=self.limit, recommended=self.recommended)
        except ValueError as err:
            self.messages.error(err, "Filtering")
            return
        self.view = view
        what = "upstream checkpoints" if upstream else "rows"
        shown = len(view.table)
        # The table first, then the count line: whoever waits for the count sees the table.
        if shown:
            self.table_html.value = table_html(view.table, marked=view.marked)
        else:
            self.table_html.value = "<i>No checkpoint matches these filters; set one to (any).</i>"
        self.count.value = (
            f"<b>{view.matching:,}</b> of {view.total:,} {what} match"
            + (f"; showing the first {shown}" if shown < view.matching else "")
            + ("; ★ = recommended checkpoint of its model" if any(view.marked) else "")
        )
        labels = [(f"{'★ ' if m else ''}{f}", f)
                  for f, m in zip(view.files, view.marked, strict=True)]
        set_options(self.selection, labels or [("", "")])

    # -- fetching ------------------------------------------------------------------------
    def _fetch(self, name: str):
        if self._fetcher is not None:
            return self._fetcher(name, progress=True)

        return resolve_checkpoint(name, progress=True)

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

