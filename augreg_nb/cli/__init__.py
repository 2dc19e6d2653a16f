"""The ``augreg-nb`` command: the notebooks' jobs, headless.

This package is the top floor of augreg_nb: it imports the domain modules, never the other
way round, and no module below it parses arguments or prints for the command line. Each
file holds one group of sub-commands and a ``register(subparsers)`` that adds them; a
handler takes the parsed ``argparse.Namespace`` and returns an exit code. Handlers import
the domain modules they drive when they run, so ``augreg-nb --help`` loads no JAX.

    augreg-nb report --out augreg-report   # the offline main job: catalogue + paper figures
    augreg-nb index --model B/16           # recommended checkpoints, filters
    augreg-nb fetch NAME                   # resolve a checkpoint to a local file
    augreg-nb figures --out DIR            # every reproducible paper figure as PNG/SVG/HTML
    augreg-nb finetune --preset smoke      # the paper's fine-tuning recipe
    augreg-nb vtab --checkpoint B/16       # the paper's VTAB sweep; a Table 5 row
    augreg-nb rank --task oxford_iiit_pet  # which checkpoint for a task: few-shot probes
    augreg-nb export --format timm RUN --out DIR   # a fine-tune as a timm / Hub folder
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from augreg_nb import __version__
from augreg_nb.cli import catalogue, export, fetch, figures, predict, rank, training, vtab

#: Command groups, in the order their sub-commands are listed in ``--help``.
COMMAND_GROUPS = (catalogue, fetch, figures, training, predict, vtab, rank, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="augreg-nb",
        description="Choose, fetch, fine-tune and re-check the AugReg ViT checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"augreg-nb {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Libraries that log through absl (orbax at every save, TFDS) speak at -v only.
    logging.getLogger("absl").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`augreg-nb index | head -1`): not an error. Point stdout at
        # devnull so that the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ValueError, RuntimeError, OSError) as err:
        from augreg_nb import distributed

        lost = distributed.lost_peer(err)
        if lost is not None:  # another process of the run is gone: say so, leave at once
            if args.verbose:
                traceback.print_exc()
            print(f"augreg-nb {args.command}: error: {lost}", file=sys.stderr)
            distributed.end_now(1)
        # Expected, explained failures: print the message (which names the fix), no traceback.
        if args.verbose:
            raise
        print(f"augreg-nb {args.command}: error: {_bounded(str(err))}", file=sys.stderr)
        return 1


#: An error message is cut to this many lines of at most MAX_ERROR_LINE characters (the
#: rest, e.g. a library's list of every dataset it knows, shows with -v).
MAX_ERROR_LINES, MAX_ERROR_LINE = 25, 1000


def _bounded(text: str) -> str:
    lines = text.splitlines() or [""]
    shown = [line if len(line) <= MAX_ERROR_LINE else
             f"{line[:MAX_ERROR_LINE]}... ({len(line):,} characters)"
             for line in lines[:MAX_ERROR_LINES]]
    if len(lines) > MAX_ERROR_LINES:
        shown.append(f"... ({len(lines) - MAX_ERROR_LINES} more lines; -v shows them all)")
    return "\n".join(shown)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
