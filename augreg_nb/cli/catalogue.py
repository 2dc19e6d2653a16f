"""``augreg-nb report`` and ``augreg-nb index``: the catalogue of checkpoints, offline first."""

from __future__ import annotations

import argparse
import os
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="catalogue + paper figures as an HTML page (offline by default)",
        description="Write the checkpoint catalogue (recommended checkpoints, availability, "
        "grids) and every reproducible paper figure to OUT/index.html.",
    )
    p.add_argument("--out", default="augreg-report", help="output folder (default: %(default)s)")
    p.add_argument("--index", help="index.csv path or URL (default: $AUGREG_NB_INDEX, else "
                   "the shipped catalogue)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "index",
        help="recommended checkpoints and filters over the index table",
        description="Without filters: the recommended checkpoint per model and its best "
        "ImageNet fine-tune. With filters: the matching rows, best first.",
    )
    p.add_argument("--source", help="index.csv path, folder, URL or 'catalogue'")
    p.add_argument("--model", action="append", help="paper name, file prefix or timm arch")
    p.add_argument("--ds", action="append", help="pre-training set: i1k, i21k, i21k_30")
    p.add_argument("--aug", action="append", help="augmentation, index name (light0, ...)")
    p.add_argument("--aug-paper", action="append", help="augmentation, paper name (light1, ...)")
    p.add_argument("--task", action="append", help="fine-tuning task, e.g. oxford_iiit_pet")
    p.add_argument("--resolution", type=int, action="append", help="224 or 384")
    p.add_argument("--sort", default="adapt_final_val", help="column to sort filtered rows by")
    p.add_argument("--top", type=int, default=20, help="rows to print (0: all)")
    p.add_argument("--where", action="store_true",
                   help="print where the listed checkpoints can be downloaded instead")
    p.add_argument("--csv", action="store_true", help="print CSV (machine-readable)")
    p.add_argument("--lenient", action="store_true", help="drop invalid rows instead of failing")
    p.set_defaults(func=_cmd_index)


def _cmd_report(args: argparse.Namespace) -> int:
    from augreg_nb.catalogue_page import build_report
    from augreg_nb.resources import ENV_INDEX

    index = args.index or os.environ.get(ENV_INDEX) or "catalogue"
    path = build_report(args.out, index=index)
    print(f"report written: open {path}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    import pandas as pd

    from augreg_nb.index import (
        availability,
        describe_provenance,
        filter_index,
        load_index,
        recommended_table,
        sort_checkpoints,
    )

    df = load_index(args.source, strict=not args.lenient)
    criteria = {
        k: v
        for k, v in {
            "model": args.model, "ds": args.ds, "aug": args.aug, "aug_paper": args.aug_paper,
            "task": args.task, "resolution": args.resolution,
        }.items()
        if v
    }  # fmt: skip
    if criteria:
        out = sort_checkpoints(filter_index(df, **criteria), args.sort, top=args.top or None)
        cols = ["name", "ds", "aug", "wd", "do", "sd", "final_val", "adapt_ds", "adapt_steps",
                "adapt_lr", "adapt_resolution", "adapt_final_val", "adapt_final_test",
                "adapt_filename"]
    else:
        out = recommended_table(df)
        cols = ["model", "filename", "aug_paper", "final_val", "imagenet_finetune",
                "imagenet_top1"]
    selected_by = out.attrs.get("selected_by", "")
    if args.where:
        wanted = out["adapt_filename" if criteria else "imagenet_finetune"]
        out = availability(df[df["adapt_filename"].isin(wanted)])
        cols = ["filename", "kind", "hf_repo", "local_path", "bucket_url"]
    # With --csv, stdout carries only the table; the notes go to stderr.
    notes = sys.stderr if args.csv else sys.stdout
    print(f"# {describe_provenance(df)}", file=notes)
    if not criteria:
        print(f"# recommended checkpoints - {selected_by}", file=notes)
    if args.csv:
        out[cols].to_csv(sys.stdout, index=False)
    elif out.empty:
        print("no rows match")
    else:
        with pd.option_context("display.max_colwidth", 120, "display.width", 250):
            print(out[cols].to_string(index=False))
    return 0
