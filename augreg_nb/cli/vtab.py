"""``augreg-nb vtab``: the paper's VTAB-1k sweep of a checkpoint, one Table 5 row."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    """``augreg-nb vtab``: the paper's VTAB sweep of a checkpoint (``augreg_nb.vtab_run``)."""
    p = sub.add_parser(
        "vtab", help="run the paper's VTAB-1k sweep of a checkpoint; Table 5 row",
        description="Fine-tune a checkpoint on the 19 VTAB tasks (or a group, or a task "
        "list) with the paper's VTAB sweep (learning rates 0.001 0.003 0.01 0.03 x 500 and "
        "2500 steps), choose each task's run by val accuracy and report its test accuracy. "
        "Resumable: rerun the same command to continue. Datasets that need a manual "
        "download are reported before anything runs.")
    p.add_argument("--checkpoint", required=True, help="model name, checkpoint name or file")
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--group", choices=("natural", "specialized", "structured"),
                        help="only the tasks of this group")
    chosen.add_argument("--tasks", nargs="+", metavar="TASK",
                        help="only these tasks (e.g. dtd clevr_count)")
    p.add_argument("--variant", choices=("1k", "full"), default="1k",
                   help="VTAB-1k splits (default, the paper's Table 5) or the full splits")
    p.add_argument("--resolution", type=int, default=None,
                   help="fine-tuning resolution (default: 384)")
    p.add_argument("--lr", type=float, nargs="+", help="learning rates (default: the paper's)")
    p.add_argument("--steps", type=int, nargs="+", help="run lengths (default: 500 2500)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set micro_batches=16")
    p.add_argument("--workdir", help="folder of the sweep (default: under the cache's runs/)")
    p.add_argument("--no-prepare", action="store_true",
                   help="do not download datasets; report unprepared ones before running")
    p.add_argument("--retrain", action="store_true",
                   help="VTAB's last step: train the chosen setting again on train+val "
                   "(train800val200) and report that run's test accuracy")
    p.add_argument("--check", action="store_true",
                   help="only report the chosen tasks' datasets and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_vtab)


def _cmd_vtab(args: argparse.Namespace) -> int:
    from augreg_nb import config as config_lib
    from augreg_nb import vtab_run

    names = vtab_run.select_tasks(args.tasks, args.group)
    # --set and --resolution are checked before anything runs (with --check too).
    resolution = vtab_run.DEFAULT_RESOLUTION if args.resolution is None else args.resolution
    base = vtab_run.base_config(args.checkpoint, resolution=resolution,
                                overrides=args.set or [])
    config_lib.validate(base)
    data_dir = base.data_dir
    if args.check:
        status = vtab_run.dataset_status(names, variant=args.variant, data_dir=data_dir)
        for name, state in status.items():
            print(f"{name:<22}{state}")
        vtab_run.check_datasets(names, variant=args.variant, data_dir=data_dir,
                                prepare=not args.no_prepare)
        return 0
    callbacks = None
    if not args.no_progress:
        from augreg_nb.callbacks import ProgressBar

        def callbacks(config):
            return [ProgressBar(desc=f"{config.task} lr {config.base_lr} "
                                f"{config.total_steps} steps")]

    def on_task(row, runs):
        print(f"{row['vtab_task']:<22}val {100 * row['adapt_final_val']:5.1f}  test "
              f"{100 * row['adapt_final_test']:5.1f}  (lr {row['adapt_lr']:g}, "
              f"{int(row['adapt_steps'])} steps, best of {len(runs)})", flush=True)

    result = vtab_run.run_vtab(
        args.checkpoint, tasks=names, variant=args.variant, workdir=args.workdir,
        resolution=resolution, learning_rates=args.lr, lengths=args.steps,
        overrides=args.set or [], prepare=not args.no_prepare, retrain=args.retrain,
        callbacks=callbacks, on_task=on_task)
    if len(result.table):
        from augreg_nb.figures.tidy import vtab_own_rows

        rows = vtab_own_rows(result.table)
        means = rows[rows["dataset"].str.startswith("Mean_")]
        for _, row in means.iterrows():
            print(f"mean {row['group']:<17}test {row['top1']:5.1f}")
    print(f"results: {result.workdir / vtab_run.RESULTS_FILE}")
    print(f"Table 5 and Figure 3 with this row: augreg-nb figures --out DIR --own "
          f"{result.workdir / vtab_run.RESULTS_FILE}")
    return 0
