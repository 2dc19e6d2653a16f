"""``augreg-nb figures``: every reproducible paper figure as PNG/SVG plus an HTML page."""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger("augreg_nb.figures")


def register(sub) -> None:
    """Add ``augreg-nb figures --out DIR [--index PATH] [--highlight MODEL]``."""
    p = sub.add_parser(
        "figures",
        help="write every reproducible paper figure as PNG/SVG plus an HTML page",
        description="Write the paper's figures and tables (PNG, SVG, HTML). Without --index "
        "(or $AUGREG_NB_INDEX) they show the numbers printed in the paper.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--index", default=None,
                   help="path or URL of a full index.csv to derive the numbers from")
    p.add_argument("--highlight", default=None, help="a model to mark, e.g. B/16")
    p.add_argument("--own", default=None, metavar="FILES",
                   help="own fine-tune results to show beside the published ones: CSV files in "
                   "the index schema or runs' result.json, comma-separated")
    p.set_defaults(func=_cmd_figures)


def _cmd_figures(args: argparse.Namespace) -> int:
    from augreg_nb.figures import read_own_results, write_all
    from augreg_nb.index import load_index
    from augreg_nb.resources import ENV_INDEX

    index = None
    location = args.index or os.environ.get(ENV_INDEX)
    if location:
        index = load_index(location)
        prov = index.attrs.get("provenance") or {}
        if prov.get("kind") == "catalogue":
            logger.warning("the shipped catalogue is not the full index table; drawing the "
                           "paper's numbers instead")
            index = None
    own = read_own_results(args.own) if args.own else None
    written = write_all(args.out, index=index, highlight=args.highlight, overlay=own)
    print(f"wrote {len(written)} files; open {written['index.html']}")
    return 0
