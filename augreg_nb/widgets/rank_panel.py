"""The ranking panel of notebook 7: which checkpoint for my data, by few-shot probes.

    from augreg_nb.widgets.rank_panel import RankPanel
    panel = RankPanel(index_df, task="oxford_iiit_pet")   # nothing runs before a button
    panel.estimate_button.click()   # the cost here: a measured forward batch x the images
    panel.wait()                    # (the estimate runs in the background too; Stop works)
    panel.start_button.click()      # features per candidate in the background, then probes
    panel.stop_button.click()       # ends it before the next batch; Start continues (cache)
    panel.wait()
    panel.winner                    # the best checkpoint: notebook 2's CHECKPOINT parameter
    panel.plot()                    # accuracy against Table 3's speed, paper's pick ringed

The work is :func:`augreg_nb.rank.rank`: the candidates' pre-logits features of the task's
train and test splits (computed once, cached on disk), big_vision's few-shot ridge probes
(1, 5, 10, 25 examples per class, 3 seeds). The panel shows the plan before the first
forward pass, a progress bar per candidate and overall, the table of mean accuracy and
spread per shot count (:func:`shown_summary`), and the winner at 10 shots with the line to
paste into notebook 2 (:func:`winner_html`).

Candidates: the recommended checkpoint of each model (★; those of the nine Table 3 models
chosen by default, as :func:`augreg_nb.rank.default_checkpoints` gives them), any other
upstream checkpoint of the index table, and any names or files typed into *More
checkpoints* (e.g. a row copied from notebook 1's browser). Smoke mode ranks fake
checkpoints (random weights) on the shipped digits at 32 px: the panel says so.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Sequence
from typing import Any

import ipywidgets as w
import pandas as pd

from augreg_nb import fewshot, rank
from augreg_nb.widgets.common import (
    FULL_WIDTH,
    MessageArea,
    ThreadOutput,
    figure_png,
    guarded,
    message_html,
    quiet_libraries,
    show_figure,
    show_library_messages,
    stop_on_kernel_interrupt,
    table_html,
    wait_for,
)
from augreg_nb.widgets.finetune_panel import checkpoint_choices

SMOKE_NOTICE = (
    "Smoke mode: the candidates are fake checkpoints with random weights (fake:Ti/16, "
    "fake:testing, fake:testing-hybrid) on the digits shipped with the package, at 32 px; "
    "the accuracies show the plumbing, nothing about the real checkpoints. Without "
    "AUGREG_NB_SMOKE=1 the panel ranks the real checkpoints on your task.")
#: Resolution choices: each checkpoint's own (224 upstream, its fine-tuning one otherwise).
RESOLUTIONS = (("each checkpoint's own", 0), ("224", 224), ("384", 384))


# ------------------------------------------------------------------------ pure functions


def shown_summary(result: rank.RankResult | None) -> pd.DataFrame:
    """One row per finished candidate, best first: "mean ± half the spread" (%) per shot
    count, Table 3's speed, and whether it is the paper's pick."""
    if result is None or result.table.empty:
        return pd.DataFrame()
    s = result.summary
    info = result.candidates.set_index("label")
    rows = []
    for c in result.order:
        row = {"candidate": c}
        for k in s.index:
            row[f"{k}-shot %"] = f"{s[('mean %', c)][k]:.1f} ± {s[('spread', c)][k] / 2:.1f}"
        speed = info.loc[c, "img_per_sec"]
        row["img/s (Table 3)"] = "" if pd.isna(speed) else f"{speed:,.0f}"
        row["paper's pick"] = "◎" if c == result.paper_pick else ""
        rows.append(row)
    return pd.DataFrame(rows)


def winner_html(result: rank.RankResult | None) -> str:
    """The winner and how to fine-tune it in notebook 2; the paper's pick beside it."""
    if result is None or result.winner is None:
        return ""
    best = result.order[0]
    text = (f"Best at {result.winner_shots} shots: {best}. To fine-tune it, set in notebook 2 "
            f"(02_finetune): CHECKPOINT = \"{result.winner}\"")
    if result.paper_pick:
        same = "the same" if result.paper_pick == best else f"{result.paper_pick}"
        text += f"\nThe paper's pick: {same} ({result.paper_pick_rule})."
    return message_html(text, "info", title="Winner")


def progress_line(p: rank.Progress) -> str:
    """The current candidate's progress as a line of text."""
    return (f"candidate {p.index} of {p.count}: {p.label} · features of {p.done:,} of "
            f"{p.total:,} images")


class RankPanel:
    """Task, candidates, shots, resolution; Estimate / Start / Stop; progress, the table,
    the winner and the plot. ``panel.wait()`` blocks until a ranking is over."""

    def __init__(self, df: pd.DataFrame | None = None, *, task: str = "oxford_iiit_pet",
                 checkpoints: Sequence[str] | str | None = None,
                 shots: Sequence[int] = fewshot.SHOTS, seeds: int = fewshot.NUM_SEEDS,
                 resolution: int = 0, batch_size: int = 64, smoke: bool = False,
                 data_dir: str | None = None, bf16_matmuls: bool = False):
        self.df = df
        self.smoke = smoke
        self.data_dir = data_dir
        self.result: rank.RankResult | None = None
        self.plan: pd.DataFrame | None = None
        self.library_output = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False
        self.messages = MessageArea()

        if smoke:
            options = [(c, c) for c in rank.SMOKE_CHECKPOINTS]
            chosen = list(rank.SMOKE_CHECKPOINTS)
            task, resolution = rank.SMOKE_TASK, rank.SMOKE_RESOLUTION
        else:
            options = [(label, value) for label, value in checkpoint_choices(df)]
            known = {v for _, v in options}
            # the API's default: the recommended checkpoint of each Table 3 model
            chosen = ([c for c in rank.default_checkpoints(df) if c in known]
                      if df is not None and len(df) else [])
        extra = []
        if isinstance(checkpoints, str):
            checkpoints = [c for c in checkpoints.replace(",", " ").split() if c]
        if checkpoints and not smoke:
            known = {v for _, v in options}
            chosen = [c for c in checkpoints if c in known]
            extra = [c for c in checkpoints if c not in known]
        self.task = w.Text(value=task, description="Task", layout=w.Layout(width=FULL_WIDTH),
                           style={"description_width": "initial"},
                           placeholder="oxford_iiit_pet, vtab1k/dtd, tfds:tf_flowers or a "
                           "folder of images", disabled=smoke)
        self.candidates = w.SelectMultiple(options=options, value=tuple(chosen), rows=8,
                                           description="Candidates",
                                           layout=w.Layout(width=FULL_WIDTH))
        self.more = w.Text(value=", ".join(extra), description="More checkpoints",
                           placeholder="names, model names (B/8) or files, comma-separated",
                           style={"description_width": "initial"},
                           layout=w.Layout(width=FULL_WIDTH), disabled=smoke)
        self.shots = w.SelectMultiple(options=list(fewshot.SHOTS),
                                      value=tuple(k for k in shots if k in fewshot.SHOTS)
                                      or fewshot.SHOTS, rows=4, description="Shots",
                                      layout=w.Layout(width="12em"))
        self.seeds = w.BoundedIntText(value=seeds, min=1, max=10, description="Seeds",
                                      layout=w.Layout(width="10em"))
        res_options = [(str(rank.SMOKE_RESOLUTION), rank.SMOKE_RESOLUTION)] if smoke else \
            list(RESOLUTIONS)
        if resolution and resolution not in [v for _, v in res_options]:
            res_options.append((str(resolution), int(resolution)))
        self.resolution = w.Dropdown(options=res_options, value=resolution or (
            rank.SMOKE_RESOLUTION if smoke else 0), description="Resolution",
            style={"description_width": "initial"}, layout=w.Layout(width="20em"))
        self.batch_size = w.BoundedIntText(value=batch_size, min=1, max=1024,
                                           description="Batch", layout=w.Layout(width="10em"))
        self.bf16 = w.Checkbox(
            value=bool(bf16_matmuls), indent=False,
            description="bfloat16 matmuls (faster on CPUs with AMX; features cached apart)",
            layout=w.Layout(width="auto"))
        self.smoke_notice = w.HTML(message_html(SMOKE_NOTICE, "warning", title="Smoke data")
                                   if smoke else "")
        self.estimate_button = w.Button(description="Estimate cost",
                                        layout=w.Layout(width="11em"))
        self.start_button = w.Button(description="Start ranking", icon="play",
                                     button_style="success", layout=w.Layout(width="11em"))
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning",
                                    disabled=True, tooltip="stop before the next batch; "
                                    "Start continues from the cached features")
        self.plan_html = w.HTML()
        self.overall_bar = w.IntProgress(value=0, min=0, max=1, description="All",
                                         layout=w.Layout(width=FULL_WIDTH, display="none"))
        self.candidate_bar = w.IntProgress(value=0, min=0, max=1, description="Candidate",
                                           layout=w.Layout(width=FULL_WIDTH, display="none"))
        self.progress_label = w.HTML()
        self.table = w.HTML()
        self.winner_box = w.HTML()
        self.figure = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.details = w.HTML()
        self.estimate_button.on_click(self._on_estimate)
        self.start_button.on_click(self._on_start)
        self.stop_button.on_click(self._on_stop)
        wrap = w.Layout(flex_flow="row wrap", max_width="100%")
        self.widget = w.VBox([
            self.smoke_notice, self.task, self.candidates, self.more,
            w.HBox([self.shots, w.VBox([self.seeds, self.batch_size]), self.resolution],
                   layout=wrap),
            self.bf16,
            w.HBox([self.estimate_button, self.start_button, self.stop_button], layout=wrap),
            self.plan_html, self.progress_label, self.candidate_bar, self.overall_bar,
            self.messages.widget, self.table, self.winner_box, self.figure, self.details,
        ], layout=w.Layout(max_width="100%"))

    @classmethod
    def for_session(cls, session, **choices) -> RankPanel:
        """The panel for a notebook Session (its index); in smoke mode the smoke set-up
        (``choices`` other than shots, seeds and bf16_matmuls are ignored)."""
        if session.smoke:
            choices = {k: v for k, v in choices.items()
                       if k in ("shots", "seeds", "bf16_matmuls")}
        return cls(session.index, smoke=session.smoke, **choices)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- state ---------------------------------------------------------------------------
    @property
    def checkpoints(self) -> list[str]:
        """The chosen candidates, then those typed into *More checkpoints*."""
        typed = [c for c in self.more.value.replace(",", " ").split() if c]
        return list(dict.fromkeys([*self.candidates.value, *typed]))

    @property
    def running(self) -> bool:
        return self._busy

    @property
    def winner(self) -> str | None:
        """The best candidate's checkpoint (None before a ranking has finished one)."""
        return self.result.winner if self.result is not None else None

    def _kwargs(self) -> dict[str, Any]:
        if not self.checkpoints:
            raise ValueError("choose at least one candidate checkpoint")
        if not self.shots.value:
            raise ValueError("choose at least one shot count")
        if not self.task.value.strip():
            raise ValueError("name a task: oxford_iiit_pet, vtab1k/dtd, tfds:<dataset> or a "
                             "folder of images")
        return dict(checkpoints=self.checkpoints, index=self.df if not self.smoke
                    else "catalogue", resolution=self.resolution.value or None,
                    batch_size=self.batch_size.value, data_dir=self.data_dir,
                    matmul_dtype="bfloat16" if self.bf16.value else None)

    # -- buttons -------------------------------------------------------------------------
    def _on_estimate(self, _button=None) -> None:
        self._launch(estimate_only=True)

    def _on_start(self, _button=None) -> None:
        self._launch(estimate_only=False)

    def _show_plan(self, text: str) -> None:
        self.plan_html.value = message_html(text, "note", title="Cost here")

    def _launch(self, *, estimate_only: bool) -> None:
        """Start the estimate or the ranking in a background thread (Stop works in both)."""
        what = "Estimating the cost" if estimate_only else "Starting the ranking"

        @guarded(self.messages, what)
        def launch():
            if self.running:
                raise RuntimeError("a ranking is running: wait for it, or press Stop")
            kw = self._kwargs()
            quiet_libraries()
            self._stop.clear()
            self._busy = True
            self.start_button.disabled = self.estimate_button.disabled = True
            self.stop_button.disabled = False
            if not estimate_only:
                for bar in (self.overall_bar, self.candidate_bar):
                    bar.layout.display = ""
                    bar.bar_style = ""
                    bar.value = 0
            self.messages.show(
                f"{'estimating' if estimate_only else 'ranking'} {len(kw['checkpoints'])} "
                f"candidate(s) on {self.task.value.strip()}: measuring a forward batch per "
                "candidate ...", "note")
            captured = ThreadOutput()
            self._thread = threading.Thread(target=self._run, args=(kw, captured,
                                                                     estimate_only),
                                            name="augreg-rank", daemon=True)
            captured.install(self._thread)
            stop_on_kernel_interrupt(self)
            self._thread.start()

        launch()

    def _progress(self, p: rank.Progress) -> None:
        if p.phase == "plan":
            self.plan = p.plan
            self._show_plan(p.text)
            self.overall_bar.max = max(1, p.count)
            self.messages.show("computing features ...", "note")
        elif p.phase == "features":
            self.candidate_bar.max = max(1, p.total)
            self.candidate_bar.value = min(p.done, p.total)
            self.progress_label.value = html.escape(progress_line(p))
        elif p.phase in ("candidate", "failed"):
            self.overall_bar.value = p.index
            self.candidate_bar.value = self.candidate_bar.max
            self.progress_label.value = html.escape(
                f"{p.index} of {p.count} candidate(s) ranked; last: {p.label}")

    def _run(self, kw: dict[str, Any], captured: ThreadOutput,
             estimate_only: bool = False) -> None:
        result = error = None
        try:
            if estimate_only:
                self._estimate(kw)
            else:
                result = rank.rank(self.task.value.strip(), shots=self.shots.value,
                                   seeds=self.seeds.value, on_progress=self._progress,
                                   should_stop=self._stop.is_set, **kw)
        except Exception as err:  # shown in the panel; the thread has no caller to tell
            error = err
        finally:
            show_library_messages(self, captured)
            self._busy = False
            self.stop_button.disabled = True
            self.start_button.disabled = self.estimate_button.disabled = False
        if error is not None:
            self.candidate_bar.bar_style = "danger"
            self.messages.error(error, "The cost estimate" if estimate_only else "The ranking")
        elif result is not None:
            self._finished(result)

    def _estimate(self, kw: dict[str, Any]) -> None:
        """The cost alone (in the background thread); Stop ends it between candidates."""
        task = rank.resolve_task(self.task.value.strip(), self.data_dir)
        cands = rank.make_candidates(kw["checkpoints"], index=kw["index"],
                                     resolution=kw["resolution"])
        self.plan = rank.estimate_cost(cands, task, batch_size=kw["batch_size"],
                                       should_stop=self._stop.is_set,
                                       matmul_dtype=kw["matmul_dtype"])
        self._show_plan(rank.cost_text(self.plan, kw["batch_size"]))
        if self._stop.is_set():
            self.messages.show("stopped: candidates not measured show 'time unknown'",
                               "warning", title="Stopped")
        else:
            self.messages.clear()

    def _finished(self, result: rank.RankResult) -> None:
        self.result = result
        summary = shown_summary(result)
        self.table.value = table_html(summary, marked=[i == 0 for i in range(len(summary))],
                                      wrap_columns=["candidate"]) if len(summary) else ""
        self.winner_box.value = winner_html(result)
        if len(summary):
            import matplotlib.pyplot as plt

            fig = rank.plot_rank(result)
            self.figure.value = figure_png(fig)
            plt.close(fig)
        done = result.table["candidate"].nunique() if len(result.table) else 0
        failed = "".join(f"\n{k}: {v}" for k, v in result.failed.items())
        if result.stopped:
            self.candidate_bar.bar_style = "warning"
            self.messages.show(f"stopped after {done} of {len(result.candidates)} "
                               "candidate(s); Start continues (computed features are cached)"
                               + (f"; could not rank:{failed}" if failed else ""),
                               "warning", title="Stopped")
        elif result.failed and not done:
            self.candidate_bar.bar_style = "danger"
            self.messages.error(f"no candidate could be ranked:{failed}", "The ranking")
        elif result.failed:
            self.overall_bar.bar_style = "warning"
            self.messages.show(f"ranked {done} of {len(result.candidates)} candidate(s) on "
                               f"{result.task}; could not rank:{failed}", "warning",
                               title="Ranking finished, with failures")
        else:
            self.overall_bar.bar_style = "success"
            self.messages.show(f"ranked {done} candidate(s) on {result.task}",
                               "info", title="Ranking finished")

    def stop(self, reason: str = "Stop pressed") -> None:
        """End the ranking before the next batch (finished candidates' features are kept)."""
        if self.running:
            self._stop.set()
            self.stop_button.disabled = True
            self.messages.show(f"{reason}: stopping ...", "note")

    def _on_stop(self, _button=None) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the ranking is over; an interrupt while waiting stops it."""
        wait_for(self, self._thread, timeout)

    def plot(self) -> None:
        """Show accuracy against inference speed (:func:`augreg_nb.rank.plot_rank`) as a
        PNG, whatever the matplotlib backend, or a note before a ranking has finished a
        candidate. ``rank.plot_rank(panel.result)`` returns the Figure itself."""
        if self.result is None or self.result.table.empty:
            print("No ranking yet: press Start ranking, then run this cell again.")
            return
        import matplotlib.pyplot as plt

        fig = rank.plot_rank(self.result)
        show_figure(fig)
        plt.close(fig)


__all__ = ["RankPanel", "progress_line", "shown_summary", "winner_html"]
