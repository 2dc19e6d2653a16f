"""Callbacks that watch a fine-tuning run: a progress bar and a live plot for notebooks.

    from augreg_nb.callbacks import ProgressBar, LivePlot
    result = finetune(config, callbacks=[ProgressBar(), LivePlot()])

A callback is any object with some of these methods (missing ones are skipped):

- ``on_train_begin(info)``: ``info`` has total_steps, start_step, global_batch, workdir
  and history (the metrics of the steps before ``start_step``, for a resumed run).
- ``on_log(step, metrics)``: every ``log_every`` steps; loss, lr, grad_norm, img_per_sec.
- ``on_eval(step, metrics)``: after each evaluation; ``val_accuracy``, ``test_accuracy``...
- ``on_train_end(history)``: the metrics history DataFrame.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)


class Callback:
    """Base class with no-op hooks (subclassing it is optional)."""

    def on_train_begin(self, info: dict) -> None: ...

    def on_log(self, step: int, metrics: dict) -> None: ...

    def on_eval(self, step: int, metrics: dict) -> None: ...

    def on_train_end(self, history) -> None: ...


def dispatch(callbacks: Iterable[Any], hook: str, *args) -> None:
    """Call ``hook`` on every callback that has it."""
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


class ProgressBar(Callback):
    """A ``tqdm.auto`` bar over the steps: loss, learning rate, img/s; tqdm shows time left."""

    def __init__(self, **tqdm_kwargs):
        self.tqdm_kwargs = tqdm_kwargs
        self.bar = None
        self._last = 0

    def on_train_begin(self, info: dict) -> None:
        from tqdm.auto import tqdm

        kwargs = {"desc": "fine-tuning", "unit": "step", "dynamic_ncols": True}
        kwargs.update(self.tqdm_kwargs)
        self.bar = tqdm(total=info["total_steps"], initial=info["start_step"], **kwargs)
        self._last = info["start_step"]

    def on_log(self, step: int, metrics: dict) -> None:
        if self.bar is None:
            return
        self.bar.update(step - self._last)
        self._last = step
        post = {"loss": f"{metrics['loss']:.4f}", "lr": f"{metrics['lr']:.2e}"}
        if math.isfinite(metrics.get("img_per_sec", math.nan)):
            post["img/s"] = f"{metrics['img_per_sec']:.1f}"
        self.bar.set_postfix(post, refresh=True)

    def on_eval(self, step: int, metrics: dict) -> None:
        if self.bar is not None and "val_accuracy" in metrics:
            self.bar.write(
                f"step {step}: val {metrics['val_accuracy']:.4f}"
                + (f", test {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else ""),
                file=self.tqdm_kwargs.get("file"),
            )

    def on_train_end(self, history) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


#: Evaluation splits in the order plots and legends list them.
SPLIT_ORDER = ("train", "val", "test")
_SPLIT_COLORS = {"val": "C1", "test": "C2"}


def _split_order(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


class StopFlag(Callback):
    """Ask a running :func:`augreg_nb.train.finetune` to stop: after :meth:`request` the run
    ends when the current step is done, saves its state and raises
    :class:`augreg_nb.train.TrainingStopped` (running it again resumes)."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.reason = ""

    def request(self, reason: str = "stop requested") -> None:
        self.stop_requested, self.reason = True, reason


class LivePlot(Callback):
    """Training loss and val/test accuracy, redrawn in place in a notebook output cell.

    ``display`` and ``update`` default to IPython's display machinery; pass your own
    callables to render elsewhere. ``every`` limits redraws to every n-th log event.
    """

    def __init__(
        self,
        *,
        every: int = 1,
        display: Callable[[Any], Any] | None = None,
        figsize: tuple[float, float] = (9.0, 3.2),
    ):
        self.every = max(1, every)
        self._display = display
        self.figsize = figsize
        self.train: list[tuple[int, float]] = []
        self.evals: dict[str, list[tuple[int, float]]] = {}
        self.figure = None
        self._handle = None
        self._events = 0

    def on_train_begin(self, info: dict) -> None:
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=self.figsize, layout="constrained")
        self.ax_loss, self.ax_acc = self.figure.subplots(1, 2)
        self.total_steps = info["total_steps"]
        self._from_history(info.get("history"))  # a resumed run shows its earlier steps
        self._show()

    def on_log(self, step: int, metrics: dict) -> None:
        self.train.append((step, float(metrics["loss"])))
        self._events += 1
        if self._events % self.every == 0:
            self._show()

    def on_eval(self, step: int, metrics: dict) -> None:
        for key, value in metrics.items():
            if key.endswith("_accuracy"):
                self.evals.setdefault(key[: -len("_accuracy")], []).append((step, float(value)))
        self._show()

    def on_train_end(self, history) -> None:
        self._from_history(history)
        self._show()

    def _from_history(self, history) -> None:
        """Take the curves from the run's history (the record of every step, also those of
        earlier sessions of a resumed or finished run)."""
        if history is None or len(history) == 0 or "step" not in history:
            return
        if "loss" in history:
            rows = history.dropna(subset=["loss"])
            self.train = [(int(s), float(v)) for s, v in zip(rows["step"], rows["loss"],
                                                               strict=True)]
        evals: dict[str, list[tuple[int, float]]] = {}
        for col in history.columns:
            if col.endswith("_accuracy"):
                rows = history.dropna(subset=[col])
                evals[col[: -len("_accuracy")]] = [
                    (int(s), float(v)) for s, v in zip(rows["step"], rows[col], strict=True)]
        if evals:
            self.evals = evals

    def _draw(self) -> None:
        # The right margin keeps the markers of the last step (at total_steps) whole.
        right = max(self.total_steps, 1) * 1.04
        ax = self.ax_loss
        ax.clear()
        if self.train:
            steps, losses = zip(*self.train, strict=True)
            ax.plot(steps, losses, color="C0", label="train loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_xlim(0, right)
        ax.set_title("training loss")
        ax = self.ax_acc
        ax.clear()
        for split in sorted(self.evals, key=_split_order):
            steps, accs = zip(*self.evals[split], strict=True)
            ax.plot(steps, accs, marker="o", color=_SPLIT_COLORS.get(split, "C3"),
                    label=split, clip_on=False)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, right)
        ax.set_title("evaluation")
        if self.evals:
            ax.legend(loc="lower right")

    def _show(self) -> None:
        if self.figure is None:
            return
        self._draw()
        if self._display is not None:
            self._display(self.figure)
            return
        try:
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython is a dependency of the notebooks
            return
        if self._handle is None:
            self._handle = display(self.figure, display_id=True)
        else:
            self._handle.update(self.figure)


def duration_text(seconds: float) -> str:
    """``seconds`` for a reader: ``0.25 s``, ``40 s``, ``12 min``, ``5 h 20 min``,
    ``3.2 days``, ``20.2 years``."""
    if not seconds == seconds or seconds in (float("inf"), float("-inf")):
        return "unknown time"
    if 0 < seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        h, m = divmod(round(seconds / 60), 60)
        return f"{h} h {m} min" if m else f"{h} h"
    if seconds < 365 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / (365.25 * 86400):.1f} years"
