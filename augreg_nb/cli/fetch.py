"""``augreg-nb fetch`` and ``augreg-nb cache``: checkpoints and the index as local files."""

from __future__ import annotations

import argparse
import logging

from augreg_nb.resources import ENV_CACHE, ENV_CHECKPOINT_DIR

logger = logging.getLogger("augreg_nb.sources")


def register(sub) -> None:
    p = sub.add_parser("fetch", help="resolve a checkpoint (or the index) to a local file",
                       description="Download a checkpoint or index.csv into the cache, or "
                                   "explain which sources failed and why.")
    p.add_argument("name", nargs="?", help="checkpoint filename (with or without .npz), timm "
                                           "name, or a path")
    p.add_argument("--index", action="store_true", help="fetch index.csv instead")
    p.add_argument("--dir", help=f"a local folder of .npz files (like ${ENV_CHECKPOINT_DIR})")
    p.add_argument("--offline", action="store_true", help="use local files and caches only")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fetch)

    c = sub.add_parser("cache", help="list or clear the download cache",
                       description="List cached checkpoints and index tables with their sizes.")
    c.add_argument("--clear", action="store_true",
                   help="delete every file augreg-nb downloaded into the cache (never other "
                        "files in the folder)")
    c.add_argument("--remove", metavar="NAME", help="delete one cached checkpoint")
    c.set_defaults(func=_cmd_cache)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from augreg_nb.sources import SOURCE_LABELS, resolve_checkpoint, resolve_index

    offline = True if args.offline else None
    if args.index:
        r = resolve_index(args.name, offline=offline, progress=not args.quiet)
    elif args.name:
        r = resolve_checkpoint(args.name, offline=offline, folder=args.dir,
                               progress=not args.quiet)
    else:
        raise ValueError("name a checkpoint to fetch, or pass --index")
    for a in r.attempts:
        logger.debug("%s", a)
    print(f"{r.path}\n  source: {SOURCE_LABELS[r.source]}, layout: {r.layout}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from augreg_nb import download as dl
    from augreg_nb.sources import checkpoint_cache_path, normalize_checkpoint_name

    root = dl.cache_dir()
    if args.clear:
        count = len(dl.list_cache(root))
        freed = dl.clear_cache(root)
        left = " (other files in it were left alone)" if root.exists() else ""
        print(f"removed {count} downloaded file{'' if count == 1 else 's'} "
              f"({dl.human_size(freed)}) from {root}{left}")
        return 0
    if args.remove:
        name, _ = normalize_checkpoint_name(args.remove)
        path = checkpoint_cache_path(name)
        part = dl.part_path(path)
        if not (path.exists() or part.exists()):
            raise FileNotFoundError(f"{name}.npz is not in the cache {root}; "
                                    "`augreg-nb cache` lists what is")
        if not dl.is_cached_file(path):
            raise FileNotFoundError(f"{path} was not downloaded by augreg-nb (it has no "
                                    f"{dl.META_SUFFIX} sidecar), so it is left alone; delete "
                                    "it yourself if you mean to")
        dl.remove_file(path)
        print(f"removed {path}")
        return 0
    entries = dl.list_cache(root)
    print(f"cache: {root}  (set ${ENV_CACHE} to move it)")
    for e in entries:
        note = "  (partial download; the next fetch resumes it)" if e.partial else ""
        print(f"  {dl.human_size(e.size):>10}  {e.path.relative_to(root)}{note}")
    total = sum(e.size for e in entries)
    print(f"  {len(entries)} file{'' if len(entries) == 1 else 's'}, {dl.human_size(total)}")
    print("Checkpoints from the Hugging Face Hub stay in the Hub's own cache: `hf cache ls`, "
          "`hf cache rm`.")
    return 0
