"""``augreg-nb finetune``, ``sweep`` and ``reproduce``: the paper's fine-tuning recipe."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from augreg_nb import distributed

_SETS = {"action": "append", "metavar": "KEY=VALUE",
         "help": "override a config field (repeatable), e.g. --set micro_batches=16"}


def _add_process_args(p: argparse.ArgumentParser) -> None:
    """The options of a run over several processes (hosts); all three or none."""
    g = p.add_argument_group(
        "several processes (all three or none; without them JAX's cluster detection "
        "decides, and a plain machine runs alone)")
    g.add_argument("--coordinator-address", metavar="HOST:PORT",
                   help="address of process 0, where the processes meet")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    g.add_argument("--process-id", type=int, metavar="I", help="this process: 0 .. N-1")
    g.add_argument("--join-timeout", type=int, metavar="S",
                   default=distributed.JOIN_TIMEOUT_S,
                   help="seconds to wait for every process to join before giving up with a "
                   f"line naming the missing one (default: {distributed.JOIN_TIMEOUT_S})")
    g.add_argument("--heartbeat-timeout", type=int, metavar="S",
                   default=distributed.HEARTBEAT_TIMEOUT_S,
                   help="seconds after which a silent process counts as dead and the others "
                   f"stop (default: {distributed.HEARTBEAT_TIMEOUT_S})")


def register(sub) -> None:
    """``augreg-nb finetune``, ``augreg-nb sweep`` and ``augreg-nb reproduce``."""
    p = sub.add_parser(
        "finetune", help="fine-tune a checkpoint with the paper's recipe (resumable)",
        description="Fine-tune with the paper's recipe. Presets: 'smoke' or "
        "'<task>-<steps>-<lr>-<resolution>' (e.g. cifar100-2500-0.01-384). Rerun the same "
        "command to resume an interrupted run.")
    p.add_argument("--preset", default="smoke", help="config preset (default: smoke)")
    p.add_argument("--checkpoint", help="model name, checkpoint name or file")
    p.add_argument("--set", **_SETS)
    p.add_argument("--workdir", help="run folder (state, history, export)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_process_args(p)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser(
        "sweep", help="run the paper's fine-tuning grid for a task; choose by val",
        description="Learning rates x lengths x resolutions of the published sweep, run by "
        "run (resumable); prints the table and the run chosen by val accuracy.")
    p.add_argument("--preset", default="smoke", help="base config (default: smoke)")
    p.add_argument("--task", help="task (default: the preset's)")
    p.add_argument("--checkpoint", help="model name, checkpoint name or file")
    p.add_argument("--lr", type=float, nargs="+", help="learning rates (default: the task's)")
    p.add_argument("--steps", type=int, nargs="+", help="run lengths (default: the task's)")
    p.add_argument("--resolution", type=int, nargs="+", help="resolutions (default: 224 384)")
    p.add_argument("--set", **_SETS)
    p.add_argument("--root", help="folder of the sweep's runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_process_args(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "reproduce", help="re-run a published fine-tune; compare with its index row",
        description="Build the exact config of an adapt_filename, run it, and print own "
        "val/test accuracy next to the published ones.")
    p.add_argument("adapt_filename", help="a fine-tuned checkpoint name from the index")
    p.add_argument("--set", **_SETS)
    p.add_argument("--workdir", help="run folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_process_args(p)
    p.set_defaults(func=_cmd_reproduce)


def _config_from_args(args: argparse.Namespace):
    from augreg_nb import config as config_lib

    config = config_lib.get_config(args.preset)
    if getattr(args, "checkpoint", None):
        config.checkpoint = args.checkpoint
    config_lib.apply_overrides(config, args.set or [])
    if getattr(args, "workdir", None):
        config.workdir = args.workdir
    return config


def _print_row(row: dict) -> None:
    width = max(len(k) for k in row)
    for key, value in row.items():
        print(f"{key:<{width}}  {value}")


def _join(args: argparse.Namespace) -> bool:
    """Join the other processes of the run (before any JAX computation); True in the
    process that reports (process 0, or the only one)."""
    from augreg_nb import distributed

    def give_up(message: str) -> None:
        print(f"augreg-nb {args.command}: error: {message}", file=sys.stderr)
        distributed.end_now(1)

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                           heartbeat_timeout_s=args.heartbeat_timeout,
                           join_timeout_s=args.join_timeout, on_join_timeout=give_up)
    if not distributed.is_main_process():  # process 0 reports for all
        logging.getLogger().setLevel(logging.WARNING)
        return False
    return True


def _agree(args: argparse.Namespace, config, workdir) -> None:
    """Refuse, at start-up, a run whose processes were given different configs, workdirs or
    numbers of processes (one exchange between the processes; nothing when alone)."""
    import json

    values = {f"config.{k}": json.dumps(v, sort_keys=True, default=str)
              for k, v in config.to_dict().items() if k != "workdir"}
    values.update(workdir=str(workdir), num_processes=str(args.num_processes))
    distributed.agree(args.command, values, timeout_s=args.join_timeout)


def _progress(args: argparse.Namespace) -> list:
    from augreg_nb import distributed
    from augreg_nb.callbacks import ProgressBar

    return [] if args.no_progress or not distributed.is_main_process() else [ProgressBar()]


def _cmd_finetune(args: argparse.Namespace) -> int:
    main = _join(args)
    from augreg_nb.train import finetune

    config = _config_from_args(args)
    _agree(args, config, config.workdir or "(default)")
    result = finetune(config, callbacks=_progress(args))
    if not main:
        return 0
    _print_row(result.result_row)
    print(f"workdir: {result.workdir}")
    if result.export_path:
        print(f"exported: {result.export_path}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    main = _join(args)
    from augreg_nb import config as config_lib
    from augreg_nb.config import default_sweep_root
    from augreg_nb.sweep import SWEEP_TABLE, sweep

    config = _config_from_args(args)
    if args.task:
        config.task = args.task
        config_lib.use_task_preprocess(config, keep={o.split("=", 1)[0].strip()
                                                     for o in args.set or []})
    root = Path(args.root) if args.root else default_sweep_root(config)
    _agree(args, config, root)
    result = sweep(
        config, root=root,
        learning_rates=args.lr, lengths=args.steps, resolutions=args.resolution,
        callbacks=None if args.no_progress else (lambda c: _progress(args)),
    )
    if not main:
        return 0
    cols = ["adapt_steps", "adapt_lr", "adapt_resolution", "adapt_final_val", "adapt_final_test"]
    print(result.table[cols].to_string(index=False))
    print(f"best by val: {result.best['adapt_filename']} val {result.best['adapt_final_val']:.4f}"
          f" test {result.best['adapt_final_test']:.4f}")
    print(f"table: {root / SWEEP_TABLE}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    main = _join(args)
    import json

    from augreg_nb.sweep import reproduce

    distributed.agree(args.command, {
        "adapt_filename": args.adapt_filename, "set": json.dumps(args.set or []),
        "workdir": str(args.workdir), "num_processes": str(args.num_processes)},
        timeout_s=args.join_timeout)

    out = reproduce(args.adapt_filename, workdir=args.workdir, overrides=args.set or [],
                    callbacks=_progress(args))
    if main:
        _print_row(out)
    return 0
