"""``augreg-nb export``: a fine-tune or checkpoint in another library's format (timm)."""

from __future__ import annotations

import argparse
import shlex

#: Formats ``augreg-nb export`` writes.
FORMATS = ("timm",)


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a fine-tune or checkpoint for timm (and the Hugging Face Hub)",
        description="Write a folder that timm loads as it loads its own Hub models "
        "(model.safetensors, config.json, README.md model card); optionally upload it to the "
        "Hugging Face Hub (token: --token, HF_TOKEN or `hf auth login`).")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                   help="a finetune run folder (with result.json and the exported .npz), a "
                        ".npz or .safetensors file, or a checkpoint name")
    p.add_argument("--format", choices=FORMATS, default="timm", help="output format (timm)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--labels", default=None,
                   help="class names: a task name (e.g. oxford_iiit_pet), 'imagenet', or a text "
                        "file with one name a line (default: the run's task; ImageNet names "
                        "for a 1000-class head)")
    p.add_argument("--model", default=None, help="model name (default: from the weights)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="upload the folder to this Hub repository (created when missing)")
    p.add_argument("--private", action="store_true", help="create the Hub repository private")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the login)")
    p.set_defaults(func=_cmd_export)


def _labels(value: str | None):
    from pathlib import Path

    if value and Path(value).is_file():
        return [line.strip() for line in Path(value).read_text().splitlines() if line.strip()]
    return value


def _cmd_export(args: argparse.Namespace) -> int:
    from augreg_nb.timm_export import export_run, push_to_hub

    words = ["augreg-nb", "export", "--format", args.format, args.source, "--out", args.out]
    if args.labels:
        words += ["--labels", args.labels]
    if args.model:
        words += ["--model", args.model]
    out = export_run(args.source, args.out, label_names=_labels(args.labels),
                     model_name=args.model, command=shlex.join(words))
    names = (f"{len(out.label_names)} class names" if out.label_names
             else "no class names (pass --labels)")
    print(f"exported {out.model_name} as timm's {out.architecture} ({out.resolution} px, "
          f"{out.num_classes} classes, {names}): {out.folder}")
    if args.push_to_hub:
        url = push_to_hub(out.folder, args.push_to_hub, token=args.token, private=args.private)
        print(f"uploaded to {args.push_to_hub}: {url}")
    return 0
