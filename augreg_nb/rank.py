"""Which checkpoint for my data: rank AugReg checkpoints by few-shot linear probes.

    from augreg_nb.rank import rank, plot_rank
    result = rank("oxford_iiit_pet")                  # the recommended checkpoint per model
    result = rank("tfds:tf_flowers", ["B/16", "S_16-i21k-300ep-lr_0.001-aug_light1-..."])
    result = rank("~/photos", shots=(10,))            # a folder: photos/<class>/*.jpg
    result.summary        # shots x candidates: mean accuracy and spread over the seeds
    result.winner         # the best candidate at 10 shots: hand it to notebook 2's CHECKPOINT
    plot_rank(result)     # accuracy against inference speed, the paper's pick marked

    augreg-nb rank --task oxford_iiit_pet --checkpoints B/16 S/16 R26+S/32 --shots 10

A candidate is a checkpoint name, a model name (its recommended ImageNet-21k upstream, as
``augreg_nb.index.recommended_checkpoints`` gives it), ``fake:<model>`` or a file. By default
the candidates are the recommended upstream checkpoints of the nine models of the paper's
Table 3 (B/8 is left out: it has no published speed and costs ten times B/16; name it to
include it). Each candidate is evaluated at its own resolution (224 for upstream
checkpoints, the fine-tuning resolution for fine-tuned ones) unless ``resolution`` is given.

For every candidate the pre-logits features of the task's train and test splits are
computed once and cached on disk (:mod:`augreg_nb.features`: per checkpoint, task, split and
resolution), then :func:`augreg_nb.fewshot.evaluate` fits the big_vision few-shot probes
(shots 1, 5, 10, 25 per class, 3 seeds, ridge l2 = 2^10) on the train features and scores
them on the whole test split. The shots come from the task's own train split (the paper's
Pets: ``train[:90%]``); big_vision's config draws from TFDS's whole ``train``, which a
``tfds:<name>?train=train&val=...&test=test`` task gives. Adding a candidate, a shot
count or a seed later costs only the new features: everything cached is read back, so a
second ranking takes seconds.

Smoke mode (``augreg-nb rank --smoke``, the notebook's ``AUGREG_NB_SMOKE=1``) ranks
:data:`SMOKE_CHECKPOINTS`, fakes with random weights, on the digits at 32 px: it shows the
plumbing in seconds, and its accuracies say nothing about the real checkpoints.

Before the first forward pass :func:`estimate_cost` measures one forward batch of each
candidate whose features are missing (its compiled pre-logits function on random weights of
the same shapes, so nothing is downloaded for it) and multiplies by the images to compute;
``on_progress`` receives that plan, then per candidate the images done and the candidate's
results. ``should_stop()`` is asked before every batch; a stopped ranking keeps the
features of the candidates that finished, and the next call continues from there. A
candidate that cannot be ranked (no source has the checkpoint, a file does not load) is
reported (``result.failed``, a "failed" progress event) and the others are ranked.

The paper's pick (section 4.5: transfer the checkpoint with the best upstream validation
accuracy) is the candidate with the highest ``final_val`` in the index table; when the
table lacks it for a candidate (the shipped catalogue has it for few checkpoints), the
candidates are compared by the paper's ImageNet-1k transfer accuracy of their model
(Table 3, ImageNet-21k 300 epochs), and ``paper_pick_rule`` says which rule was used.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from augreg_nb import features as features_lib
from augreg_nb import fewshot
from augreg_nb import names as names_lib
from augreg_nb.callbacks import duration_text
from augreg_nb.config import FAKE_CHECKPOINT_PREFIX
from augreg_nb.inference import matmul_dtype_name
from augreg_nb.task_types import Task

logger = logging.getLogger(__name__)

#: The shot count the winner is chosen at (big_vision shows 10-shot results first).
WINNER_SHOTS = 10
#: The task splits the probes train and test on.
SPLITS = ("train", "test")
#: Smoke mode: fake checkpoints (random weights in the published layout, written locally
#: by the ``fake:`` source) ranked on the digits shipped with the package, at 32 px.
SMOKE_CHECKPOINTS = (f"{FAKE_CHECKPOINT_PREFIX}Ti/16", f"{FAKE_CHECKPOINT_PREFIX}testing",
                     f"{FAKE_CHECKPOINT_PREFIX}testing-hybrid")
SMOKE_TASK = "digits"
SMOKE_RESOLUTION = 32
RULE_FINAL_VAL = "highest upstream validation accuracy (index final_val), paper section 4.5"
RULE_TABLE3 = ("highest ImageNet-1k transfer accuracy of the model in Table 3 (the index "
               "lacks final_val for some candidates)")


@dataclasses.dataclass
class Candidate:
    """One checkpoint to rank and what is known about it before any forward pass."""

    checkpoint: str  #: what is loaded: a checkpoint name, ``fake:<model>`` or a file
    label: str  #: short name for tables and plots
    model: str | None  #: registry model name ("B/16", "testing"); None until loaded
    resolution: int  #: the resolution its features are computed at
    img_per_sec: float = math.nan  #: Table 3's inference speed (V100) at the resolution
    upstream_val: float = math.nan  #: index ``final_val`` of its upstream checkpoint
    imagenet_top1: float = math.nan  #: Table 3's ImageNet-1k top-1 of its model (i21k)
    #: feature extraction speed measured here (images / seconds, pre-processing included),
    #: read from the cache's meta; NaN until its features were computed
    measured_img_per_sec: float = math.nan


@dataclasses.dataclass
class RankResult:
    """What :func:`rank` found; ``table`` has every (candidate, shots, seed) accuracy."""

    task: str
    table: pd.DataFrame  #: candidate, shots, seed, accuracy, train_examples
    candidates: pd.DataFrame  #: one row per candidate (see :func:`candidate_frame`)
    shots: tuple[int, ...]
    stopped: bool = False
    paper_pick: str | None = None  #: label of the paper's pick (None: no rule applies)
    paper_pick_rule: str = ""
    plan: pd.DataFrame | None = None  #: the cost estimate made before the start
    #: candidates that could not be ranked (label -> why: a checkpoint no source has, a
    #: file that does not load, ...); the others are ranked all the same
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def summary(self) -> pd.DataFrame:
        """Shots (rows) x candidates (columns): mean accuracy (%) and spread (max - min
        over the seeds, points), candidates in ranking order."""
        if self.table.empty:
            return pd.DataFrame()
        g = self.table.groupby(["shots", "candidate"])["accuracy"]
        mean = (100 * g.mean()).unstack("candidate")
        spread = (100 * (g.max() - g.min())).unstack("candidate")
        order = [c for c in self.order if c in mean.columns]
        return pd.concat({"mean %": mean[order], "spread": spread[order]}, axis=1)

    @property
    def order(self) -> list[str]:
        """Candidates that finished, best first at :data:`WINNER_SHOTS` (or the largest
        shot count ranked when 10 is not)."""
        if self.table.empty:
            return []
        shots = self.winner_shots
        means = self.table[self.table["shots"] == shots].groupby("candidate")["accuracy"]
        return list(means.mean().sort_values(ascending=False, kind="stable").index)

    @property
    def winner_shots(self) -> int:
        return WINNER_SHOTS if WINNER_SHOTS in self.shots else max(self.shots)

    @property
    def winner(self) -> str | None:
        """The checkpoint (as notebook 2's CHECKPOINT takes it) of the best candidate."""
        if not self.order:
            return None
        row = self.candidates.set_index("label").loc[self.order[0]]
        return str(row["checkpoint"])

    def text(self) -> str:
        """The summary as plain text: one line per candidate, one column per shot count."""
        failed = [f"could not rank {k}: {v}" for k, v in self.failed.items()]
        if self.table.empty:
            return "\n".join(["no candidate finished", *failed])
        s = self.summary
        lines = [f"{'candidate':<40}" + "".join(f"{k:>5}-shot      " for k in s.index)]
        for c in self.order:
            cells = "".join(f"{s[('mean %', c)][k]:6.1f} ± {s[('spread', c)][k] / 2:4.1f}    "
                            for k in s.index)
            mark = " (paper's pick)" if c == self.paper_pick else ""
            lines.append(f"{c[:40]:<40}{cells}{mark}")
        lines.append("(mean over seeds ± half the spread (max - min), accuracy in %)")
        return "\n".join([*lines, *failed])


# ----------------------------------------------------------------------- candidates


def _table3() -> pd.DataFrame:
    from augreg_nb.figures import paper

    return paper.table3()


def _index_frame(index: Any) -> pd.DataFrame:
    if isinstance(index, pd.DataFrame):
        return index
    from augreg_nb.index import load_index

    return load_index(index)


def default_checkpoints(index: Any = None) -> list[str]:
    """The recommended upstream checkpoint of each Table 3 model, fastest model last."""
    from augreg_nb.index import recommended_checkpoints

    rec = recommended_checkpoints(_index_frame(index))
    t3 = _table3()
    models = [m for m in t3.index if m in rec.index]
    return [str(rec.loc[m, "filename"]) for m in models]


def _describe(checkpoint: str, rec: pd.DataFrame | None, index: pd.DataFrame | None,
              resolution: int | None) -> Candidate:
    text = str(checkpoint).strip()
    if text in names_lib.MODELS:  # a model name: its recommended upstream checkpoint
        if rec is None or text not in rec.index:
            raise ValueError(f"no recommended checkpoint of {text} in the index table")
        text = str(rec.loc[text, "filename"])
    model, native, label = None, 224, text
    if text.startswith(FAKE_CHECKPOINT_PREFIX):
        model = text.removeprefix(FAKE_CHECKPOINT_PREFIX)
    elif names_lib.is_valid_name(text):
        parsed = names_lib.parse_name(text)
        model, native = parsed.model, parsed.resolution
        label = f"{parsed.model} {parsed.pretraining} {parsed.aug_paper} wd {parsed.wd:g}"
        if parsed.is_finetuned:
            label += f" ({parsed.adapt_suffix})"
    elif Path(text).expanduser().is_file():
        label = Path(text).name
        try:
            model, native = _file_model(str(Path(text).expanduser().resolve()))
        except (ValueError, OSError) as err:  # said when the ranking loads it
            logger.debug("cannot read %s yet: %s", text, err)
    res = int(resolution or native)
    cand = Candidate(checkpoint=text, label=label, model=model, resolution=res)
    t3 = _table3()
    if model in t3.index:
        cand.img_per_sec = float(t3.loc[model, "img_sec_384" if res >= 384 else "img_sec_224"])
        cand.imagenet_top1 = float(t3.loc[model, "i21k_300_224"])
    if index is not None and names_lib.is_valid_name(text):
        up = names_lib.parse_name(text).upstream_filename
        hit = index.loc[index["filename"] == up, "final_val"].dropna()
        if len(hit):
            cand.upstream_val = float(hit.iloc[0])
    return cand


@functools.lru_cache(maxsize=32)
def _file_model(path: str) -> tuple[str, int]:
    from augreg_nb import checkpoint

    model, flat = checkpoint.load_flat(path)
    return model, checkpoint.checkpoint_resolution(model, checkpoint.unflatten(flat))


def make_candidates(checkpoints: Sequence[str] | None = None, *, index: Any = None,
                    resolution: int | None = None) -> list[Candidate]:
    """The candidates for ``checkpoints`` (default: :func:`default_checkpoints`), with
    Table 3's speed and the index's upstream validation accuracy where known."""
    df = None
    needs_index = checkpoints is None or any(str(c).strip() in names_lib.MODELS
                                             for c in checkpoints)
    if needs_index or index is not None:
        df = _index_frame(index)
    rec = None
    if df is not None:
        from augreg_nb.index import recommended_checkpoints

        rec = recommended_checkpoints(df)
    if checkpoints is None:
        checkpoints = default_checkpoints(df)
    if isinstance(checkpoints, str):
        checkpoints = [c for c in checkpoints.replace(",", " ").split() if c]
    if not checkpoints:
        raise ValueError("no candidate checkpoints: give names, model names or files, or "
                         "none for the recommended checkpoint of each model")
    out, seen = [], set()
    for c in checkpoints:
        cand = _describe(c, rec, df, resolution)
        if cand.checkpoint in seen:
            continue
        seen.add(cand.checkpoint)
        out.append(cand)
    labels = [c.label for c in out]
    for c in out:  # two different files can share a label: make them unique
        if labels.count(c.label) > 1:
            c.label = c.checkpoint
    return out


def paper_pick(cands: Sequence[Candidate]) -> tuple[str | None, str]:
    """(label, rule) of the candidate the paper's rule would transfer (module docstring)."""
    if cands and all(not math.isnan(c.upstream_val) for c in cands):
        return max(cands, key=lambda c: c.upstream_val).label, RULE_FINAL_VAL
    known = [c for c in cands if not math.isnan(c.imagenet_top1)]
    if known:
        return max(known, key=lambda c: c.imagenet_top1).label, RULE_TABLE3
    return None, "no rule applies: no candidate has an upstream accuracy or a Table 3 row"


def candidate_frame(cands: Sequence[Candidate]) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(c) for c in cands])


# ----------------------------------------------------------------------------- cost


def resolve_task(task: str | Task, data_dir: str | None = None) -> Task:
    """A Task from a name (paper, VTAB, ``tfds:<name>``, ``digits``) or a folder path."""
    from augreg_nb import tasks as tasks_lib

    if isinstance(task, Task):
        return task
    text = str(task).strip()
    path = Path(text).expanduser()
    if ("/" in text and not text.startswith(("vtab", tasks_lib.TFDS_PREFIX))) or (
            path.is_dir() and text not in tasks_lib.list_tasks(None)):
        if not path.is_dir():
            raise ValueError(f"{text!r} is neither a known task nor a folder of images")
        return tasks_lib.folder_task(path)
    return tasks_lib.get_task(text, data_dir=data_dir)


def split_sizes(task: Task) -> dict[str, int]:
    from augreg_nb.input_pipeline import num_examples

    return {s: num_examples(task, s) for s in SPLITS}


@functools.lru_cache(maxsize=32)
def measure_forward(model: str, resolution: int, batch_size: int,
                    matmul_dtype: Any = None) -> float:
    """Seconds of one forward batch of pre-logits, measured after compiling (random
    weights of the model's shapes: the same compiled function the real weights use)."""
    import jax
    import jax.numpy as jnp

    from augreg_nb.models import abstract_params

    shapes = features_lib.without_head(abstract_params(model, 1, resolution))
    params = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)
    images = np.zeros((batch_size, resolution, resolution, 3), np.float32)
    fn = features_lib.pre_logits_fn(model, matmul_dtype_name(matmul_dtype))
    jax.block_until_ready(fn(params, images))  # compile
    start = time.perf_counter()
    jax.block_until_ready(fn(params, images))
    return time.perf_counter() - start


def _cached(cand: Candidate, task: Task, split: str, cache_root, matmul_dtype=None) -> bool:
    path = features_lib.cache_path(cand.checkpoint, task, split, cand.resolution, cache_root,
                                   matmul_dtype)
    return path.is_file()


def estimate_cost(cands: Sequence[Candidate], task: Task, *, batch_size: int = 64,
                  cache_root=None, sizes: dict[str, int] | None = None,
                  should_stop: Callable[[], bool] | None = None,
                  matmul_dtype: Any = None) -> pd.DataFrame:
    """Per candidate: images whose features are missing, a measured forward batch, and
    the estimated seconds (batches x batch time); cached splits cost nothing."""
    sizes = sizes or split_sizes(task)
    rows = []
    for c in cands:
        todo = sum(n for s, n in sizes.items()
                   if not _cached(c, task, s, cache_root, matmul_dtype))
        batch_s = math.nan
        if todo and c.model is not None and not (should_stop and should_stop()):
            batch_s = measure_forward(c.model, c.resolution, batch_size, matmul_dtype)
        batches = sum(math.ceil(n / batch_size) for s, n in sizes.items()
                      if not _cached(c, task, s, cache_root, matmul_dtype))
        rows.append({"label": c.label, "model": c.model, "resolution": c.resolution,
                     "images": todo, "batch_s": batch_s,
                     "seconds": 0.0 if not todo else batches * batch_s,
                     "cached": not todo})
    plan = pd.DataFrame(rows)
    plan.attrs["batch_size"] = int(batch_size)
    return plan


def cost_text(plan: pd.DataFrame, batch_size: int) -> str:
    """The plan in words: per candidate the images to compute and the estimated time."""
    lines = []
    for r in plan.itertuples(index=False):
        if r.cached:
            lines.append(f"{r.label}: features cached, no forward pass")
        elif math.isnan(r.batch_s):
            lines.append(f"{r.label}: {r.images:,} images, time unknown until loaded")
        else:
            lines.append(f"{r.label}: {r.images:,} images at {r.resolution} px, "
                         f"{r.batch_s:.2f} s per batch of {batch_size} -> "
                         f"~{duration_text(r.seconds)}")
    total = float(np.nansum(plan["seconds"]))
    lines.append(f"total here: ~{duration_text(total)} of forward passes, plus loading "
                 "(and downloading) the checkpoints that are not cached")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- rank


@dataclasses.dataclass
class Progress:
    """What ``on_progress`` receives: ``phase`` is "plan" (``plan`` and ``text`` set),
    "features" (``done`` of ``total`` images of candidate ``index`` of ``count``),
    "candidate" (that candidate finished: ``rows`` its accuracies) or "done"."""

    phase: str
    index: int = 0
    count: int = 0
    label: str = ""
    done: int = 0
    total: int = 0
    plan: pd.DataFrame | None = None
    text: str = ""
    rows: pd.DataFrame | None = None


def _load(cand: Candidate):
    from augreg_nb import checkpoint, random_checkpoints  # noqa: F401 - the "fake:" source

    model, params = checkpoint.load_pretrained(cand.checkpoint, resolution=cand.resolution)
    cand.model = model
    return model, params


def candidate_features(cand: Candidate, task: Task, *, batch_size: int = 64, cache_root=None,
                       should_stop: Callable[[], bool] | None = None,
                       on_batch: Callable[[int], None] | None = None,
                       matmul_dtype: Any = None
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train and test features of a candidate: read from the cache, or computed (the
    checkpoint is loaded only then) and cached. ``matmul_dtype="bfloat16"``: extracted
    with the faster bfloat16 matrix multiplies, cached apart from float32 features."""
    out, missing, timed = {}, [], []
    for split in SPLITS:
        meta = features_lib.describe(cand.checkpoint, task, split, cand.resolution,
                                     matmul_dtype)
        path = features_lib.cache_path(cand.checkpoint, task, split, cand.resolution,
                                       cache_root, matmul_dtype)
        got = features_lib.read(path, meta)
        if got is None:
            missing.append((split, path, meta))
        else:
            out[split] = got[:2]
            timed.append((len(got[1]), got[2].get("seconds")))
            if on_batch is not None:
                on_batch(len(got[1]))
    if missing:
        model, params = _load(cand)
        for split, path, meta in missing:
            start = time.perf_counter()
            x, y = features_lib.extract(model, params, task, split, resolution=cand.resolution,
                                        batch_size=batch_size, should_stop=should_stop,
                                        on_batch=on_batch, matmul_dtype=matmul_dtype)
            seconds = time.perf_counter() - start
            features_lib.write(path, x, y, {**meta, "model": model, "seconds": seconds})
            out[split] = (x, y)
            timed.append((len(y), seconds))
    if all(s for _, s in timed):
        cand.measured_img_per_sec = sum(n for n, _ in timed) / sum(s for _, s in timed)
    return out


def rank(task: str | Task, checkpoints: Sequence[str] | str | None = None, *,
         index: Any = None, shots: Sequence[int] = fewshot.SHOTS,
         seeds: int = fewshot.NUM_SEEDS, l2: float = fewshot.L2_REG,
         resolution: int | None = None, batch_size: int = 64, data_dir: str | None = None,
         cache_root=None, estimate: bool = True,
         on_progress: Callable[[Progress], None] | None = None,
         should_stop: Callable[[], bool] | None = None,
         matmul_dtype: Any = None) -> RankResult:
    """Rank ``checkpoints`` on ``task`` by few-shot linear-probe accuracy (see the module
    docstring). ``index``: the index table (a DataFrame or a source; default: the usual
    look-up) for model names, defaults and upstream validation accuracy. ``estimate``:
    measure the cost first and report it as a "plan" progress event.
    ``matmul_dtype="bfloat16"``: extract features with bfloat16 matrix multiplies (faster on
    CPUs with bfloat16 matrix units; features cached apart from float32 ones)."""
    shots = tuple(sorted({int(k) for k in shots}))
    if not shots or shots[0] < 1:
        raise ValueError(f"shots must be positive counts per class, got {list(shots)}")
    task_obj = resolve_task(task, data_dir)
    cands = make_candidates(checkpoints, index=index, resolution=resolution)
    stop = should_stop or (lambda: False)
    report = on_progress or (lambda p: None)
    sizes = split_sizes(task_obj)
    plan = None
    if estimate:
        plan = estimate_cost(cands, task_obj, batch_size=batch_size, cache_root=cache_root,
                             sizes=sizes, should_stop=stop, matmul_dtype=matmul_dtype)
        report(Progress("plan", count=len(cands), plan=plan,
                        text=cost_text(plan, batch_size)))
    pick, rule = paper_pick(cands)
    tables, stopped, failed = [], False, {}
    total = sum(sizes.values())
    for i, cand in enumerate(cands, 1):
        if stop():
            stopped = True
            break
        done = 0

        def on_batch(k, i=i, cand=cand):
            nonlocal done
            done += k
            report(Progress("features", i, len(cands), cand.label, done, total))

        report(Progress("features", i, len(cands), cand.label, 0, total))
        start = time.perf_counter()
        try:
            feats = candidate_features(cand, task_obj, batch_size=batch_size,
                                       cache_root=cache_root, should_stop=stop,
                                       on_batch=on_batch, matmul_dtype=matmul_dtype)
        except features_lib.Stopped:
            stopped = True
            break
        except Exception as err:  # noqa: BLE001 - one candidate's failure, said, not fatal
            failed[cand.label] = str(err).strip() or type(err).__name__
            logger.warning("%s could not be ranked: %s", cand.label, failed[cand.label])
            report(Progress("failed", i, len(cands), cand.label, text=failed[cand.label]))
            continue
        (xtr, ytr), (xte, yte) = feats["train"], feats["test"]
        rows = fewshot.evaluate(xtr, ytr, xte, yte, task_obj.num_classes, shots=shots,
                                seeds=seeds, l2=l2)
        rows.insert(0, "candidate", cand.label)
        tables.append(rows)
        logger.info("%s: ranked in %.1f s", cand.label, time.perf_counter() - start)
        report(Progress("candidate", i, len(cands), cand.label, total, total, rows=rows))
    table = (pd.concat(tables, ignore_index=True) if tables else
             pd.DataFrame(columns=["candidate", "shots", "seed", "accuracy",
                                   "train_examples"]))
    result = RankResult(task=task_obj.name, table=table, candidates=candidate_frame(cands),
                        shots=shots, stopped=stopped, paper_pick=pick, paper_pick_rule=rule,
                        plan=plan, failed=failed)
    report(Progress("done", len(tables), len(cands)))
    return result


# ----------------------------------------------------------------------------- plot


def plot_rank(result: RankResult, *, shots: int | None = None, ax=None):
    """Accuracy at ``shots`` (default: the winner's shot count) against inference speed:
    Table 3's V100 img/s (log scale) when every finished candidate has one, else the
    feature extraction speed measured here (log scale), else the candidates side by side.
    Error bars span the seeds (min to max); the paper's pick is ringed, the best candidate
    starred. Returns the Figure."""
    import matplotlib.pyplot as plt

    from augreg_nb.figures.plots import place_labels

    shots = int(shots or result.winner_shots)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    fig = ax.figure
    t = result.table[result.table["shots"] == shots]
    if t.empty:
        ax.text(0.5, 0.5, "no candidate has finished", ha="center", transform=ax.transAxes)
        return fig
    stats = t.groupby("candidate")["accuracy"].agg(["mean", "min", "max"]) * 100
    info = result.candidates.set_index("label")
    speeds = info["img_per_sec"].reindex(stats.index).astype(float)
    xlabel, log = "inference speed, img/s (V100, paper's Table 3)", True
    if speeds.isna().any():
        speeds = info["measured_img_per_sec"].reindex(stats.index).astype(float)
        xlabel = "feature extraction speed here, img/s (no Table 3 speed for every candidate)"
    if speeds.isna().any():
        speeds = pd.Series(np.arange(1.0, len(stats) + 1), index=stats.index)
        xlabel, log = "candidate (no speed known for every candidate)", False
        ax.set_xticks(speeds.to_numpy(), [c.split(" (")[0] for c in stats.index], fontsize=8)
        ax.set_xlim(0.5, len(stats) + 0.5)
    ax.errorbar(speeds, stats["mean"], yerr=[stats["mean"] - stats["min"],
                                             stats["max"] - stats["mean"]],
                fmt="o", color="tab:blue", ecolor="lightsteelblue", capsize=3, zorder=3)
    best = result.order[0]
    ax.scatter([speeds[best]], [stats.loc[best, "mean"]], marker="*", s=220, color="gold",
               edgecolor="black", zorder=4, label=f"best here: {best}")
    if result.paper_pick in stats.index:
        p = result.paper_pick
        ax.scatter([speeds[p]], [stats.loc[p, "mean"]], s=260, facecolor="none",
                   edgecolor="crimson", linewidth=2, zorder=5, label=f"paper's pick: {p}")
    if log:
        ax.set_xscale("log")
    place_labels(ax, [(float(speeds[c]), float(stats.loc[c, "mean"]), c.split(" (")[0])
                      for c in stats.index])
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(f"{shots}-shot linear probe accuracy (%)", fontsize=9)
    ax.set_title(f"{result.task}: {shots}-shot accuracy, mean over seeds (bars: min to max)",
                 fontsize=9)
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
