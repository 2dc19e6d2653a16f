"""``augreg-nb vtab``: the paper's VTAB sweep of a checkpoint, one Table 5 row."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    """``augreg-nb vtab``: the paper's VTAB sweep of a checkpoint (``augreg_nb.vtab_run``)."""
    p = sub.add_parser(
        "vtab", help="run the paper's VTAB sweep of a checkpoint (full VTAB); a Table 5 row",
        description="Fine-tune a checkpoint on the 19 VTAB tasks (or a group, or a task "
        "list) with the paper's VTAB sweep (learning rates 0.001 0.003 0.01 0.03 x 500 and "
        "2500 steps), choose each task's run by val accuracy and report its test accuracy. "
        "By default on VTAB's full training sets, what Table 5 reports; --variant 1k runs "
        "VTAB-1k, which is reported on its own. First it measures a training step here and "
        "says what the chosen grid costs on this machine. Resumable: rerun the same command "
        "to continue. Datasets that need a manual download, or a download without network, "
        "are reported before anything runs.")
    p.add_argument("--checkpoint", required=True, help="model name, checkpoint name or file")
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--group", choices=("natural", "specialized", "structured"),
                        help="only the tasks of this group")
    chosen.add_argument("--tasks", nargs="+", metavar="TASK",
                        help="only these tasks (e.g. dtd clevr_count)")
    p.add_argument("--variant", choices=("full", "1k"), default="full",
                   help="full VTAB training sets (default; the paper's Table 5) or VTAB-1k "
                   "(800 training examples; not comparable with Table 5)")
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
                   "and report that run's test accuracy")
    p.add_argument("--check", action="store_true",
                   help="only report the chosen tasks' datasets and exit")
    p.add_argument("--estimate", action="store_true",
                   help="only measure a step here and print what the grid costs, then exit")
    p.add_argument("--no-estimate", action="store_true",
                   help="start without measuring a step first")
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
            print(f"{name:<22}{vtab_run.STATUS_WORDS[state]}")
        vtab_run.check_datasets(names, variant=args.variant, data_dir=data_dir,
                                prepare=not args.no_prepare)
        return 0
    if args.variant == "1k":
        print("VTAB-1k (800 training examples per task): reported on its own; Table 5's "
              "numbers come from the full training sets and are not compared with it.")
    if args.estimate or not args.no_estimate:
        base = vtab_run.base_config(args.checkpoint,
                                    resolution=args.resolution or vtab_run.DEFAULT_RESOLUTION,
                                    overrides=args.set or [])
        print("measuring one training step on this machine ...", flush=True)
        timing = vtab_run.measure_step(base)
        cost = vtab_run.grid_cost(
            names, variant=args.variant,
            learning_rates=args.lr or vtab_run.vtab.VTAB_SWEEP.learning_rates,
            lengths=args.steps or vtab_run.SWEEP_LENGTHS,
            seconds_per_step=timing.seconds_per_step, global_batch=base.global_batch)
        print(vtab_run.cost_text(cost, timing), flush=True)
        if args.estimate:
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
        callbacks=callbacks, on_task=on_task, on_status=lambda text: print(text, flush=True))
    if len(result.table):
        from augreg_nb.figures.tidy import vtab_own_rows

        if args.variant == "full":
            rows = vtab_own_rows(result.table)
            means = rows[rows["dataset"].str.startswith("Mean_")]
            for _, row in means.iterrows():
                print(f"mean {row['group']:<17}test {row['top1']:5.1f}")
    print(f"results: {result.workdir / vtab_run.RESULTS_FILE}")
    if args.variant == "full":
        print(f"Table 5 and Figure 3 with this row: augreg-nb figures --out DIR --own "
              f"{result.workdir / vtab_run.RESULTS_FILE}")
    return 0
