"""Time to first step of the smoke fine-tune, and each notebook's run in smoke mode.

Smoke fine-tune: a fresh interpreter (empty temporary cache, so it also prepares the tiny
digits dataset and writes its fake checkpoint, as a first run does) imports augreg_nb,
calls ``train.finetune(get_config("smoke"))`` with ``log_every=1`` and records when the
first step is logged: that time is dominated by XLA compiling the train step. The run then
continues to its end, so the whole smoke fine-tune is timed as well.

Notebooks: every ``notebooks/*.ipynb`` is executed headless through ``nbclient`` with
``AUGREG_NB_SMOKE=1`` in a temporary cache, on a kernel running this interpreter; the
seconds from kernel start to the last cell are reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from bench.common import REPO, Row

NOTEBOOK_TIMEOUT_S = 600


def run_smoke(*, total_steps: int | None = None) -> list[Row]:
    from augreg_nb import resources

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env[resources.ENV_CACHE] = tmp
        env[resources.ENV_OFFLINE] = "1"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        args = json.dumps({"workdir": str(Path(tmp) / "run"), "total_steps": total_steps})
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "bench.startup", args], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"smoke fine-tune failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return [
        Row("smoke", "smoke fine-tune: finetune() call to first step", res["first_step_s"],
            "s", f"compile + first step {res['compile_and_first_step_s']:.1f} s; "
            f"imports {res['import_s']:.1f} s", res),
        Row("smoke", f"smoke fine-tune: whole run ({res['total_steps']} steps + evals)",
            res["total_s"], "s", f"test accuracy {res['test_accuracy']:.3f}"),
    ]


class _FirstStep:
    def __init__(self):
        self.begin = self.first = None

    def on_train_begin(self, info):
        self.begin = time.perf_counter()

    def on_log(self, step, metrics):
        if self.first is None:
            self.first = time.perf_counter()


def _child(options: dict) -> dict:
    t0 = time.perf_counter()
    from augreg_nb.config import get_config
    from augreg_nb.train import finetune

    import_s = time.perf_counter() - t0
    config = get_config("smoke")
    config.unlock()
    config.log_every = 1
    if options.get("total_steps"):
        config.total_steps = int(options["total_steps"])
        config.warmup_steps = min(config.warmup_steps, max(1, config.total_steps // 10))
        config.eval_every = config.checkpoint_every = config.total_steps
    config.workdir = options["workdir"]
    config.lock()
    watch = _FirstStep()
    t1 = time.perf_counter()
    result = finetune(config, callbacks=[watch])
    end = time.perf_counter()
    return {"import_s": import_s, "first_step_s": watch.first - t1,
            "compile_and_first_step_s": watch.first - watch.begin, "total_s": end - t1,
            "total_steps": int(config.total_steps),
            "test_accuracy": float(result.result_row.get("adapt_final_test", float("nan")))}


def _kernel_spec(root: Path) -> str:
    spec = root / "kernels" / "augreg-nb-bench"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "augreg_nb (bench)", "language": "python",
    }))
    return "augreg-nb-bench"


def run_notebooks(folder: Path | None = None) -> list[Row]:
    folder = folder or REPO / "notebooks"
    paths = sorted(folder.glob("*.ipynb"))
    if not paths:
        return [Row("notebooks", "notebooks in smoke mode", None, "s",
                    f"skipped: no notebooks in {folder}")]
    import nbformat
    from nbclient import NotebookClient

    from augreg_nb import resources

    rows = []
    # patch.dict restores every variable the section sets when it ends
    with mock.patch.dict(os.environ), tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_PATH"] = tmp
        kernel = _kernel_spec(Path(tmp))
        os.environ[resources.ENV_SMOKE] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        for path in paths:
            work = Path(tmp) / path.stem
            work.mkdir()
            os.environ[resources.ENV_CACHE] = str(work / "cache")
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(nb, kernel_name=kernel, timeout=NOTEBOOK_TIMEOUT_S,
                                    startup_timeout=120,
                                    resources={"metadata": {"path": str(work)}})
            t0 = time.perf_counter()
            note = ""
            try:
                client.execute()
            except Exception as err:  # report it in the table, go on with the others
                note = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
            elapsed = time.perf_counter() - t0
            rows.append(Row("notebooks", f"{path.name} (smoke mode, kernel start to end)",
                            None if note else elapsed, "s", note))
    return rows


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
