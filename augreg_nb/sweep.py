"""The paper's fine-tuning sweep for a task, and re-runs of published fine-tunes.

    from augreg_nb.config import preset_for
    from augreg_nb.sweep import sweep, reproduce, reproduce_config

    base = preset_for("oxford_iiit_pet", 500, 0.01, 224, checkpoint="R26+S/32")
    result = sweep(base, root="runs/pets-sweep")    # 4 learning rates x 2 lengths x 2 res
    result.table                                    # one row per run (index schema)
    result.best                                     # chosen by val accuracy; report its test

    config = reproduce_config(
        "R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.0-sd_0.0"
        "--oxford_iiit_pet-steps_0k-lr_0.003-res_384")           # the exact published recipe
    comparison = reproduce(config_or_name, workdir="runs/repro")  # own vs published accuracy

Each run of a sweep has its own workdir under ``root`` and is itself resumable; rerunning a
sweep skips finished runs and continues the interrupted one. ``root/sweep.csv`` holds the
table after every run.

    augreg-nb sweep --task oxford_iiit_pet --checkpoint R26+S/32 --root runs/pets-sweep
    augreg-nb reproduce R26_S_32-...--oxford_iiit_pet-steps_0k-lr_0.003-res_384
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import pandas as pd

from augreg_nb import config as config_lib
from augreg_nb.atomic import atomic_write
from augreg_nb.index import load_index
from augreg_nb.names import parse_name
from augreg_nb.run_folder import RUN_FILE, RunFolderError, read_result
from augreg_nb.train import (
    RECIPE_FIELDS,
    RESULT_FILE,
    STATE_DIR,
    finetune,
    load_task,
    run_workdir,
)
from augreg_nb.train_state import saved

logger = logging.getLogger(__name__)

SWEEP_TABLE = "sweep.csv"


@dataclasses.dataclass
class SweepResult:
    table: Any  #: pandas.DataFrame, one index-schema row per run (plus its workdir)
    best: Any  #: pandas.Series: the run with the highest adapt_final_val


def sweep_configs(
    base,
    *,
    learning_rates: Sequence[float] | None = None,
    lengths: Sequence[int] | None = None,
    resolutions: Sequence[int] | None = None,
) -> list:
    """One locked config per (length, learning rate, resolution) of the grid.

    Defaults: the task's published lengths and learning rates (``augreg_nb.tasks``) and
    224 and 384 px. Every other field (checkpoint, batch, micro-batches...) comes from
    ``base``; warm-ups follow Table 4.
    """
    if learning_rates is None or lengths is None:
        task = load_task(base)
        learning_rates = task.learning_rates if learning_rates is None else learning_rates
        lengths = task.sweep_steps if lengths is None else lengths
    resolutions = config_lib.SWEEP_RESOLUTIONS if resolutions is None else resolutions
    out = []
    for steps in lengths:
        for lr in learning_rates:
            for res in resolutions:
                c = base.copy_and_resolve_references()
                c.total_steps = int(steps)
                c.warmup_steps = config_lib.warmup_for(int(steps))
                c.base_lr = float(lr)
                c.resolution = int(res)
                c.eval_every = min(base.eval_every, int(steps)) if base.eval_every else 0
                c.lock()
                out.append(c)
    return out


def sweep(
    base,
    *,
    root: str | Path,
    learning_rates: Sequence[float] | None = None,
    lengths: Sequence[int] | None = None,
    resolutions: Sequence[int] | None = None,
    callbacks: Callable[[Any], Iterable[Any]] | None = None,
) -> SweepResult:
    """Run the grid (see :func:`sweep_configs`) run by run, resumably; choose by val.

    ``callbacks(config)`` may return the callbacks of each run (e.g. a progress bar).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    configs = sweep_configs(base, learning_rates=learning_rates, lengths=lengths,
                            resolutions=resolutions)
    for i, config in enumerate(configs, 1):
        config.workdir = str(root / config_lib.run_name(config, in_sweep=True))
        # A folder of another config is refused here (or left for one of its own), before
        # any run of the sweep trains: a sweep never reports another config's results.
        workdir = run_workdir(config)
        row = _done_before(workdir)
        if row is not None:
            logger.info("[%d/%d] %s: done before (val %.4f)", i, len(configs), workdir.name,
                        row["adapt_final_val"])
        else:
            logger.info("[%d/%d] %s", i, len(configs), workdir.name)
            row = finetune(config, callbacks=callbacks(config) if callbacks else ()).result_row
        rows.append({**row, "workdir": str(workdir)})
        if jax.process_index() == 0:
            _write_csv(pd.DataFrame(rows), root / SWEEP_TABLE)
    table = pd.DataFrame(rows)
    best = table.loc[table["adapt_final_val"].astype(float).idxmax()]
    logger.info("best by val: %s (val %.4f, test %.4f)", best["adapt_filename"],
                best["adapt_final_val"], best["adapt_final_test"])
    return SweepResult(table=table, best=best)


def _done_before(workdir: Path) -> dict | None:
    """The result row of a finished run in ``workdir`` whose record matches its config
    (checked by :func:`augreg_nb.train.run_workdir`), or None: then :func:`finetune` runs
    it, which resumes it or writes a damaged ``result.json`` again from the saved state."""
    if not ((workdir / RUN_FILE).is_file() and saved(workdir / STATE_DIR)
            and (workdir / RESULT_FILE).is_file()):
        return None
    try:
        return read_result(workdir / RESULT_FILE)["result_row"]
    except RunFolderError as err:
        logger.warning("%s; the run is read back from its saved state", err)
        return None


def _write_csv(frame, path: Path) -> None:
    with atomic_write(path) as f:
        f.write(frame.to_csv(index=False).encode("utf-8"))


def reproduce_config(adapt_filename: str, *, micro_batches: int = 8):
    """The exact config of a published fine-tune, built from its filename.

    Task, learning rate, length (and its Table 4 warm-up), resolution and the upstream
    checkpoint come from the name; the recipe (batch 512, SGD-momentum, clipping) is the
    protocol's. ``micro_batches`` only changes memory use, not the result.
    """
    name = parse_name(adapt_filename)
    if not name.is_finetuned:
        raise ValueError(
            f"{adapt_filename!r} is an upstream checkpoint; reproduce takes a fine-tuned name "
            "(with '--<task>-steps_..-lr_..-res_..'), e.g. an adapt_filename of the index"
        )
    return config_lib.preset_for(
        name.adapt_ds, name.adapt_steps, name.adapt_lr, name.adapt_resolution,
        checkpoint=name.upstream_filename, micro_batches=micro_batches,
    )


def published_row(adapt_filename: str, index=None) -> dict | None:
    """The index row of ``adapt_filename`` (from ``index`` or :func:`load_index`), if any."""
    if index is None:
        index = load_index(strict=False)
    rows = index[index["adapt_filename"] == adapt_filename]
    return None if rows.empty else rows.iloc[0].to_dict()


def reproduce(
    adapt_filename: str,
    *,
    workdir: str | Path | None = None,
    overrides: Iterable[str] = (),
    index=None,
    callbacks: Iterable[Any] = (),
) -> dict:
    """Re-run a published fine-tune and put its accuracies next to the published ones.

    ``overrides`` are ``key=value`` strings applied to the exact config (e.g.
    ``micro_batches=32`` to fit memory, ``data_dir=...``); overriding a recipe field makes
    the run a different experiment, and the result says which fields were changed.
    """
    config = reproduce_config(adapt_filename)
    exact = config.copy_and_resolve_references()
    config_lib.apply_overrides(config, overrides)
    if workdir is not None:
        config.workdir = str(workdir)
    changed = [k for k in RECIPE_FIELDS if config[k] != exact[k]]
    result = finetune(config, callbacks=callbacks)
    published = published_row(adapt_filename, index) or {}
    own_test = result.result_row["adapt_final_test"]
    pub_test = published.get("adapt_final_test", math.nan)
    return {
        "adapt_filename": adapt_filename,
        "own_final_val": result.result_row["adapt_final_val"],
        "published_final_val": published.get("adapt_final_val", math.nan),
        "own_final_test": own_test,
        "published_final_test": pub_test,
        "test_difference": own_test - pub_test,
        "changed_recipe_fields": changed,
        "workdir": str(result.workdir),
        "export_path": str(result.export_path or ""),
    }
