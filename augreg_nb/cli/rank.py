"""``augreg-nb rank``: which checkpoint for my data, by few-shot linear probes."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    """``augreg-nb rank``: rank checkpoints on a task (``augreg_nb.rank``)."""
    p = sub.add_parser(
        "rank", help="rank checkpoints on a task by few-shot linear probes (minutes, CPU ok)",
        description="Rank AugReg checkpoints on one dataset the way big_vision's few-shot "
        "evaluator scores them: pre-logits features of the train and test splits (cached "
        "on disk), ridge probes with 1, 5, 10 and 25 examples per class over 3 seeds. "
        "Prints the cost before it starts, then a table of accuracies per shot count. "
        "Rerun to continue after an interruption: cached features are read back.")
    p.add_argument("--task", help="paper or VTAB task (oxford_iiit_pet, vtab1k/dtd), "
                   "tfds:<dataset>, or a folder of images (<folder>/<class>/*.jpg)")
    p.add_argument("--checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoint names, model names (B/16: its recommended checkpoint) "
                   "or files (default: the recommended checkpoint of each Table 3 model)")
    p.add_argument("--shots", type=int, nargs="+", default=None,
                   help="examples per class (default: 1 5 10 25)")
    p.add_argument("--seeds", type=int, default=None, help="draws per shot count (default 3)")
    p.add_argument("--resolution", type=int, default=None,
                   help="resolution for every candidate (default: each checkpoint's own)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--index", default=None, help="index table (path, URL or 'catalogue')")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir")
    p.add_argument("--estimate-only", action="store_true",
                   help="print the cost per candidate and exit")
    p.add_argument("--csv", metavar="FILE", help="write every (candidate, shots, seed) "
                   "accuracy to FILE")
    p.add_argument("--plot", metavar="FILE", help="save accuracy against speed to FILE "
                   "(.png or .svg)")
    p.add_argument("--matmul-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: extract features with bfloat16 matrix multiplies and "
                        "float32 sums, faster on CPUs with bfloat16 matrix units (Intel AMX); "
                        "opt-in, cached apart from float32 features")
    p.add_argument("--smoke", action="store_true",
                   help="offline: fake checkpoints on the shipped digits (numbers mean "
                   "nothing; shows the plumbing)")
    p.set_defaults(func=_cmd_rank)


def _cmd_rank(args: argparse.Namespace) -> int:
    from augreg_nb import fewshot, rank

    task, ckpts, resolution, index = args.task, args.checkpoints, args.resolution, args.index
    if args.smoke:
        task = task or rank.SMOKE_TASK
        ckpts = ckpts or list(rank.SMOKE_CHECKPOINTS)
        resolution = resolution or rank.SMOKE_RESOLUTION
        index = index or "catalogue"
        print("smoke mode: fake checkpoints with random weights; the accuracies show the "
              "plumbing, nothing about the real checkpoints")
    if not task:
        raise ValueError("--task is required (or --smoke): a paper or VTAB task, "
                         "tfds:<dataset> or a folder of images")
    if args.estimate_only:
        task_obj = rank.resolve_task(task, args.data_dir)
        cands = rank.make_candidates(ckpts, index=index, resolution=resolution)
        plan = rank.estimate_cost(cands, task_obj, batch_size=args.batch_size,
                                  matmul_dtype=args.matmul_dtype)
        print(rank.cost_text(plan, args.batch_size))
        return 0

    def on_progress(p: rank.Progress) -> None:
        if p.phase == "plan":
            print(f"cost of ranking {p.count} candidate(s) here:\n{p.text}", flush=True)
        elif p.phase == "features" and p.done == 0:
            print(f"[{p.index}/{p.count}] {p.label}: features of {p.total:,} images ...",
                  flush=True)
        elif p.phase == "candidate":
            ten = p.rows.groupby("shots")["accuracy"].mean()
            cells = ", ".join(f"{k}-shot {100 * v:.1f}%" for k, v in ten.items())
            print(f"[{p.index}/{p.count}] {p.label}: {cells}", flush=True)
        elif p.phase == "failed":
            print(f"[{p.index}/{p.count}] {p.label}: could not be ranked: {p.text}",
                  flush=True)

    result = rank.rank(
        task, ckpts, index=index, shots=args.shots or fewshot.SHOTS,
        seeds=args.seeds or fewshot.NUM_SEEDS, resolution=resolution,
        batch_size=args.batch_size, data_dir=args.data_dir, on_progress=on_progress,
        matmul_dtype=args.matmul_dtype)
    print()
    if args.matmul_dtype == "bfloat16":
        print("features from bfloat16 matrix multiplies (float32 sums), cached apart from "
              "float32 features")
    print(result.text())
    if result.paper_pick:
        print(f"paper's pick: {result.paper_pick} ({result.paper_pick_rule})")
    if result.winner:
        print(f"winner: {result.winner}")
        print(f"fine-tune it: notebook 2 with CHECKPOINT = {result.winner!r}, or augreg-nb "
              f"finetune --preset <task>-<steps>-<lr>-<res> --checkpoint {result.winner}")
    if args.csv:
        result.table.to_csv(args.csv, index=False)
        print(f"accuracies: {args.csv}")
    if args.plot:
        rank.plot_rank(result).savefig(args.plot)
        print(f"plot: {args.plot}")
    return 1 if result.stopped or result.failed else 0
