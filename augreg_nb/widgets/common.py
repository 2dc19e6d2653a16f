"""Pieces every panel uses: readable error messages, HTML tables, guarded button handlers.

A panel never lets a traceback reach the notebook: a button handler wrapped by
:func:`guarded` shows the exception as a short message (what failed, the error's own
explanation, which already names the fix) in the panel's :class:`MessageArea` and logs the
traceback at DEBUG level for whoever wants it.
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import ipywidgets as w
import pandas as pd

logger = logging.getLogger(__name__)

#: Dropdown value meaning "no filter".
ANY = "(any)"
#: Width of a widget that spans its panel: 100 % less the margins widgets get, so that it
#: never makes the panel wider than the notebook (a horizontal scrollbar).
FULL_WIDTH = "calc(100% - 8px)"

_STYLES = {
    "error": "color:#8a1f11;background:#fdecea;border-left:4px solid #d93025;",
    "warning": "color:#5f4b00;background:#fff8e1;border-left:4px solid #f9a825;",
    "info": "color:#0b3d1e;background:#e8f5e9;border-left:4px solid #34a853;",
    "note": "color:#333;background:#f4f4f4;border-left:4px solid #9e9e9e;",
}


def message_html(text: str, kind: str = "info", title: str | None = None) -> str:
    """An HTML box with ``text`` (escaped; line breaks kept) in the style of ``kind``."""
    if kind not in _STYLES:
        raise ValueError(f"kind must be one of {sorted(_STYLES)}, not {kind!r}")
    head = f"<b>{html.escape(title)}</b><br>" if title else ""
    body = html.escape(str(text))
    return (
        f'<div class="augreg-{kind}" style="{_STYLES[kind]}padding:6px 10px;margin:4px 0;'
        f'white-space:pre-wrap;line-height:1.4;font-family:var(--jp-ui-font-family,sans-serif);">'
        f"{head}{body}</div>"
    )


def describe_error(err: BaseException) -> str:
    """The message a user reads: the error's text (ours name the problem and the fix),
    prefixed with its type only when the text alone would be unclear."""
    text = str(err).strip()
    if isinstance(err, KeyError) and text.startswith("'"):
        text = f"missing key {text}"
    if not text:
        return type(err).__name__
    if isinstance(err, (ValueError, RuntimeError, LookupError, OSError)):
        return text
    return f"{type(err).__name__}: {text}"


class MessageArea:
    """An ``HTML`` widget that shows one message (error, warning, info) at a time."""

    def __init__(self) -> None:
        self.widget = w.HTML(value="")
        self.kind: str | None = None
        self.text = ""

    def show(self, text: str, kind: str = "info", title: str | None = None) -> None:
        self.kind, self.text = kind, str(text)
        self.widget.value = message_html(text, kind, title)

    def error(self, err: BaseException | str, what: str) -> None:
        text = err if isinstance(err, str) else describe_error(err)
        self.show(text, "error", title=f"{what} failed")

    def clear(self) -> None:
        self.kind, self.text = None, ""
        self.widget.value = ""


def guarded(messages: MessageArea, what: str) -> Callable[[Callable], Callable]:
    """Decorator for handlers: exceptions become a readable message in ``messages``."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def handler(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # shown to the user, never re-raised into the notebook
                logger.debug("%s failed", what, exc_info=True)
                messages.error(err, what)
                return None

        return handler

    return wrap


def table_html(
    df: pd.DataFrame,
    *,
    marked: Iterable[bool] | None = None,
    float_format: str = "{:.4g}",
    max_height: str = "26em",
    wrap_columns: Iterable[str] = (),
    selected: int | None = None,
    clamp_lines: int | None = None,
    row_click: str | None = None,
) -> str:
    """``df`` as a scrollable, escaped HTML table; rows where ``marked`` is True are bold,
    row ``selected`` (a position) is outlined and has the class ``augreg-selected``.

    Cells of ``wrap_columns`` (long names) may break after each ``-`` or ``_`` so the table
    fits the notebook's width; the break points are not characters, so a copied name is
    whole. Other cells stay on one line. ``clamp_lines``: a wrapped cell shows at most that
    many lines (the rest behind an ellipsis, the whole text in its tooltip), and one click
    selects all of it, so a copy is the whole name. ``row_click``: JavaScript run when a
    row is clicked, ``{row}`` replaced by the row's position (a panel's own script, never
    data: the cells stay escaped).
    """
    marked = list(marked) if marked is not None else [False] * len(df)
    wrap = [c in set(wrap_columns) for c in df.columns]
    head = "".join(f"<th style='text-align:left;padding:2px 6px'>{html.escape(str(c))}</th>"
                   for c in df.columns)
    rows = []
    for i, (flag, values) in enumerate(zip(marked, df.itertuples(index=False), strict=True)):
        cells = []
        for wraps, v in zip(wrap, values, strict=True):
            text = html.escape(_fmt(v, float_format))
            if wraps:
                full = text
                text = text.replace("-", "-<wbr>").replace("_", "_<wbr>")
                style = "padding:1px 6px;min-width:7em;overflow-wrap:anywhere"
                if clamp_lines:
                    text = (f"<div class='augreg-clamp' title='{full}' style='display:"
                            f"-webkit-box;-webkit-box-orient:vertical;-webkit-line-clamp:"
                            f"{int(clamp_lines)};overflow:hidden;user-select:all'>{text}</div>")
            else:
                style = "padding:1px 6px;white-space:nowrap"
            cells.append(f"<td style='{style}'>{text}</td>")
        style = "font-weight:bold;background:#fff8e1;" if flag else ""
        attrs = ""
        if i == selected:
            style += "outline:2px solid #1976d2;outline-offset:-2px;"
            attrs = " class='augreg-selected'"
        if row_click:
            attrs += f' onclick="{html.escape(row_click.replace("{row}", str(i)))}"'
            style += "cursor:pointer;"
        style = f" style='{style}'" if style else ""
        rows.append(f"<tr{attrs}{style}>{''.join(cells)}</tr>")
    return (
        f"<div style='max-height:{max_height};overflow-y:auto;overflow-x:auto;max-width:100%'>"
        "<table class='augreg-table' style='border-collapse:collapse;font-size:12px;"
        "line-height:1.35;width:100%'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _fmt(value: Any, float_format: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float):
        return float_format.format(value)
    return str(value)


def dropdown(description: str, options: list, value: Any = ANY, **layout) -> w.Dropdown:
    """A labelled dropdown whose value falls back to the first option when ``value`` is
    not among ``options``."""
    values = [o[1] if isinstance(o, tuple) else o for o in options]
    return w.Dropdown(
        description=description,
        options=options,
        value=value if value in values else values[0],
        style={"description_width": "initial"},
        layout=w.Layout(**(layout or {"width": "auto"})),
    )


def set_options(widget: w.Dropdown, options: list, keep: Any = None) -> None:
    """Replace a dropdown's options, keeping ``keep`` (default: its value) when possible.

    Does nothing when the options are unchanged (no change events fire then)."""
    keep = widget.value if keep is None else keep
    values = [o[1] if isinstance(o, tuple) else o for o in options]
    current = [o[1] if isinstance(o, tuple) else o for o in widget.options]
    labels = [o[0] if isinstance(o, tuple) else str(o) for o in options]
    if current == values and list(widget._options_labels) == labels:
        return
    widget.options = options
    if values:
        widget.value = keep if keep in values else values[0]


def attempt_reporter(status: w.HTML) -> Callable[[int, int, str], None]:
    """An ``on_attempt(k, n, description)`` for :func:`augreg_nb.sources.resolve_checkpoint`
    that shows "trying source k of n: ..." in ``status`` while a fetch runs."""

    def report(k: int, n: int, description: str) -> None:
        status.value = (f"<span class='augreg-trying' style='color:#555'>trying source {k} of "
                        f"{n}: {html.escape(str(description))}</span>")

    return report


def figure_png(figure, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib Figure (no pyplot, no backend needed)."""
    import io

    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def show_figure(figure, dpi: int = 100) -> None:
    """Display a matplotlib Figure as a PNG image, whatever the matplotlib backend."""
    from IPython.display import Image, display

    display(Image(data=figure_png(figure, dpi), format="png"))


def run_in_output(output: w.Output, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Call ``fn`` with its printing, progress bars and plots going to ``output``.

    Inside IPython an ``Output`` context swallows exceptions (and prints a traceback into
    the widget); here the exception is passed on to the caller instead, so a guarded
    handler turns it into a readable message.
    """
    result: dict[str, Any] = {}
    with output:
        try:
            result["value"] = fn(*args, **kwargs)
        except Exception as err:  # re-raised below, outside the Output context
            result["error"] = err
    if "error" in result:
        raise result["error"]
    return result["value"]


def quiet_libraries(*, tfds: bool = True) -> None:
    """Keep TensorFlow's, absl's and TFDS's log lines out of the panels.

    TensorFlow's C++ notices (oneDNN, CPU features) are silenced when this runs before
    TensorFlow is imported (``TF_CPP_MIN_LOG_LEVEL``, unless the user set it); absl's
    Python log drops below warnings; TFDS draws no progress bars of its own (``tfds=False``
    leaves TFDS alone: importing it loads TensorFlow, seconds a notebook's first cell should
    not spend). What still
    gets printed while a panel runs goes to its collapsed *library messages*.
    """
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from absl import logging as absl_logging
    except ImportError:
        absl_logging = None
    if absl_logging is not None:
        absl_logging.set_verbosity(absl_logging.ERROR)
    if tfds and ("tensorflow_datasets" in sys.modules or _importable("tensorflow_datasets")):
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class ThreadOutput:
    """While installed, what one thread writes to ``sys.stdout``/``sys.stderr`` is kept
    here (``text``) instead of reaching the notebook; other threads print as before.

    A panel that runs work in a background thread installs it, so library chatter from
    that work never lands in whichever cell happens to be running.
    """

    def __init__(self) -> None:
        import threading

        self.thread: Any = None
        self.parts: list[str] = []
        self._lock = threading.Lock()
        self._saved: dict[str, Any] = {}

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self.parts)

    def install(self, thread) -> None:
        import sys

        self.thread = thread
        for name in ("stdout", "stderr"):
            original = getattr(sys, name)
            self._saved[name] = original
            setattr(sys, name, _Routed(original, self))

    def uninstall(self) -> None:
        import sys

        for name, original in self._saved.items():
            current = getattr(sys, name)
            if isinstance(current, _Routed) and current.owner is self:
                setattr(sys, name, original)
        self._saved.clear()

    def write(self, text: str) -> None:
        with self._lock:
            self.parts.append(text)


def show_library_messages(panel, captured: ThreadOutput) -> None:
    """End ``captured`` (a panel's background thread's output) and show what it kept in the
    panel's collapsed *library messages* block (``panel.details``), the text also as
    ``panel.library_output``."""
    captured.uninstall()
    panel.library_output = captured.text
    panel.details.value = details_html(captured.text, "library messages")


class _Routed:
    """A stream that sends the owner's thread's writes to the owner, others on."""

    def __init__(self, original, owner: ThreadOutput):
        self.original = original
        self.owner = owner

    def write(self, text: str) -> int:
        import threading

        if threading.current_thread() is self.owner.thread:
            self.owner.write(text)
            return len(text)
        return self.original.write(text)

    def flush(self) -> None:
        self.original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


#: Terminal escape sequences (colours, cursor moves) that libraries write to stderr: shown
#: as text in HTML they are noise (``[0;31m``), so :func:`details_html` drops them.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def details_html(text: str, title: str) -> str:
    """``text`` in a collapsed ``<details>`` block titled ``title`` (empty for no text),
    without terminal escape sequences; a carriage return keeps only what was drawn last on
    its line (a progress bar's final state)."""
    text = _ANSI.sub("", text)
    text = "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else
                      line.rstrip("\r") for line in text.split("\n")).strip()
    if not text:
        return ""
    lines = text.count("\n") + 1
    return (f"<details style='margin:4px 0'><summary style='color:#555'>{html.escape(title)} "
            f"({lines} line{'s' if lines != 1 else ''})</summary><pre style='white-space:"
            f"pre-wrap;font-size:11px;max-height:14em;overflow:auto'>{html.escape(text)}"
            "</pre></details>")


def stop_on_kernel_interrupt(panel) -> None:
    """In a Jupyter kernel: interrupting the kernel while it is idle (the panel's work runs
    in a background thread) calls ``panel.stop("kernel interrupted")``, so the run ends in
    the panel's "stopped" message; when the panel is not running the kernel's own handler
    runs. ``panel`` has a ``running`` flag and a ``stop(reason)`` method.

    The kernel ignores interrupts while idle and restores its idle handler after each
    request; that handler is replaced by one that stops a running panel first. Calling
    this again for the same panel changes nothing; outside a kernel it does nothing.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None or not hasattr(kernel, "saved_sigint_handler"):
        return
    previous = kernel.saved_sigint_handler
    if getattr(previous, "_augreg_panel", None) is panel:
        return

    def on_interrupt(signum, frame):
        if panel.running:
            panel.stop("kernel interrupted")
        elif callable(previous):
            previous(signum, frame)

    on_interrupt._augreg_panel = panel  # type: ignore[attr-defined]
    kernel.saved_sigint_handler = on_interrupt


def wait_for(panel, thread, timeout: float | None = None) -> None:
    """Block until ``thread`` (a panel's background work, or None) ends. An interrupt
    (Ctrl-C, the kernel's stop button) while waiting calls ``panel.stop("interrupted")``
    and waits for the work to end there instead of raising."""
    if thread is None:
        return
    try:
        thread.join(timeout)
    except KeyboardInterrupt:
        panel.stop("interrupted")
        thread.join()


#: Colours of the outcomes of runs (done, failed, stopped) in :func:`outcomes_html`.
_OUTCOME_STYLES = {
    "done": "color:#0b3d1e;background:#e8f5e9;",
    "failed": "color:#8a1f11;background:#fdecea;font-weight:bold;",
    "stopped": "color:#5f4b00;background:#fff8e1;",
    "running": "color:#0b3d8a;background:#e8f0fe;",
    "waiting": "color:#555;",
}


def outcomes_html(items: Iterable[tuple[str, str, str]]) -> str:
    """A table of runs, one line each: (run, status, detail) with status "done",
    "failed" (red, its class ``augreg-failed``; detail: the reason), "stopped", "running"
    or "waiting". A panel that runs several things lists them here, so a failure is never
    hidden behind a finished message."""
    rows = []
    for name, status, detail in items:
        if status not in _OUTCOME_STYLES:
            raise ValueError(f"status must be one of {sorted(_OUTCOME_STYLES)}, not {status!r}")
        rows.append(
            f"<tr class='augreg-{status}' style='{_OUTCOME_STYLES[status]}'>"
            f"<td style='padding:1px 6px;overflow-wrap:anywhere'>{html.escape(name)}</td>"
            f"<td style='padding:1px 6px;white-space:nowrap'>{html.escape(status)}</td>"
            f"<td style='padding:1px 6px;white-space:pre-wrap'>{html.escape(detail)}</td></tr>")
    return ("<div style='max-height:20em;overflow:auto;max-width:100%'><table "
            "class='augreg-outcomes' style='border-collapse:collapse;font-size:12px;"
            "width:100%'><thead><tr><th style='text-align:left;padding:2px 6px'>run</th>"
            "<th style='text-align:left;padding:2px 6px'>status</th><th style='text-align:"
            "left;padding:2px 6px'>result or reason</th></tr></thead><tbody>"
            f"{''.join(rows)}</tbody></table></div>")


def outcome_message(messages: MessageArea, counts: dict[str, int], what: str,
                    failures: Iterable[str] = ()) -> None:
    """Show the end of a batch of runs in ``messages``: red (an error, titled "``what``
    failed") when any run failed, with the reasons; amber when runs were stopped; green
    only when every run is done. ``counts``: {"done": n, "failed": n, "stopped": n}."""
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no runs"
    failures = list(failures)
    if counts.get("failed"):
        reasons = "\n".join(f"- {r}" for r in failures)
        messages.show(f"{summary}\n{reasons}" if reasons else summary, "error",
                      title=f"{what} failed")
    elif counts.get("stopped"):
        messages.show(f"{summary}; Start continues", "warning", title=f"{what} stopped")
    else:
        messages.show(summary, "info", title=f"{what} finished")
