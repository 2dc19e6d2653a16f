"""``augreg-nb predict`` and ``augreg-nb devices``: run a checkpoint, see the accelerator."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify images with a checkpoint (top-k classes)",
        description="Classify images with an AugReg checkpoint (name, .npz or timm "
                    ".safetensors file) and print the top-k classes with probabilities.",
    )
    p.add_argument("checkpoint", help="checkpoint name or file")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", default=None, help="model name (default: from the file)")
    p.add_argument("--resolution", type=int, default=None,
                   help="input size in px (default: the checkpoint's own)")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image")
    p.add_argument("--labels", default=None,
                   help="label set: a task name (e.g. oxford_iiit_pet); default ImageNet "
                        "names for 1000-class heads")
    p.add_argument("--matmul-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: matrix multiplies with bfloat16 operands and float32 sums, "
                        "faster on CPUs with bfloat16 matrix units (Intel AMX); opt-in, as "
                        "it changes the logits slightly (see --agreement)")
    p.add_argument("--agreement", action="store_true",
                   help="with --matmul-dtype bfloat16: also run float32 on the same images "
                        "and print the top-1 agreement and the largest logit difference")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("devices", help="show the accelerator and the number of devices")
    p.set_defaults(func=_cmd_devices)


def _cmd_predict(args: argparse.Namespace) -> int:
    from augreg_nb import checkpoint
    from augreg_nb.inference import agreement, format_predictions, predict
    from augreg_nb.preprocess import prepare_images

    if args.agreement and args.matmul_dtype != "bfloat16":
        raise ValueError("--agreement compares bfloat16 matrix multiplies with float32; add "
                         "--matmul-dtype bfloat16")

    target = Path(args.checkpoint).expanduser()
    kw = {"model_name": args.model, "resolution": args.resolution}
    try:
        is_file = target.is_file()
    except OSError:  # e.g. a name longer than a file name can be: not a file, so a name
        is_file = False
    if is_file:
        name, flat = checkpoint.load_flat(target, **kw)
        params = checkpoint.unflatten(flat)
    else:
        name, params = checkpoint.load_pretrained(args.checkpoint, **kw)
    preds = predict(name, params, args.images, resolution=args.resolution, top_k=args.top_k,
                    label_names=args.labels, matmul_dtype=args.matmul_dtype)
    print(format_predictions(args.images, preds))
    if args.agreement:
        from augreg_nb.checkpoint import checkpoint_resolution

        res = args.resolution or checkpoint_resolution(name, params)
        print(agreement(name, params, prepare_images(args.images, int(res))).text())
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from augreg_nb.envinfo import describe_devices

    print(describe_devices())
    return 0
