"""Index: load + validate the full-size synthetic table from the cache, and each query.

The synthetic index (:mod:`augreg_nb.testing.synthetic_index`, 51,509 rows in the real 21
columns) is written as the cached ``index.csv`` of a temporary cache folder, and
``index.load_index()`` reads it from there as it would a downloaded copy. Then every
question the index browser and the notebooks ask is timed on that table.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from bench.common import Row, median, time_interleaved

LOAD_TARGET_S = 0.5
QUERY_TARGET_S = 0.020


def _queries(df) -> dict[str, Callable[[], object]]:
    from augreg_nb import index
    from augreg_nb.widgets import index_browser as ib

    rec = index.recommended_checkpoints(df)
    upstream = rec.loc["B/16", "filename"]
    state = {"model": "R26+S/32", "aug_paper": "light2", "task": "oxford_iiit_pet"}
    return {
        "recommended_checkpoints": lambda: index.recommended_checkpoints(df),
        "best_finetune (B/16, imagenet2012, 384)":
            lambda: index.best_finetune(df, upstream, "imagenet2012", 384),
        "filter_index (model, aug, task)": lambda: index.filter_index(
            df, model="R26+S/32", aug_paper="light2", task="kitti"),
        "grid_summary (downstream)": lambda: index.grid_summary(df, "downstream"),
        "browser: filter_options": lambda: ib.filter_options(df),
        "browser: browse (fine-tunes, 3 filters)": lambda: ib.browse(df, state),
        "browser: browse (all rows, sort by test acc)":
            lambda: ib.browse(df, {}, sort_by="fine-tuned test accuracy"),
        "browser: browse (upstream view)": lambda: ib.browse(
            df, {"model": "B/16"}, view=ib.VIEWS[1]),
    }


def run_index(*, repeats: int) -> list[Row]:
    from augreg_nb import index, resources, sources
    from augreg_nb.testing.synthetic_index import write_synthetic_index

    rows: list[Row] = []
    # patch.dict restores every variable the section sets when it ends
    with mock.patch.dict(os.environ), tempfile.TemporaryDirectory() as tmp:
        os.environ[resources.ENV_CACHE] = tmp
        os.environ.pop(resources.ENV_INDEX, None)
        path = sources.index_cache_path()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_index(path)
        size_mb = Path(path).stat().st_size / 1e6
        holder = {}

        def load():
            holder["df"] = index.load_index()

        times = time_interleaved({"load": load}, repeats=repeats, warmup=1)["load"]
        df = holder["df"]
        if df.attrs["provenance"].get("kind") != "cache":
            raise RuntimeError(f"the index came from {df.attrs['provenance']}, not the "
                               "cache the bench wrote")
        t = median(times)
        rows.append(Row("index", f"load_index from cache ({len(df):,} rows, "
                        f"{size_mb:.1f} MB)", t, "s",
                        "ok" if t <= LOAD_TARGET_S else f"over {LOAD_TARGET_S} s",
                        {"seconds": times, "rows": len(df)}))
        queries = _queries(df)
        q_times = time_interleaved(queries, repeats=max(repeats, 5), warmup=1)
        for name, ts in q_times.items():
            t = median(ts)
            rows.append(Row("index", name, t * 1000, "ms",
                            "ok" if t <= QUERY_TARGET_S else
                            f"over {QUERY_TARGET_S * 1000:.0f} ms", {"seconds": ts}))
    return rows
