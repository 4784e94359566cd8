"""``singe-dist shards``: write webdataset shards from an ImageFolder tree or from the bundled digits.

    singe-dist shards --imagefolder DIR --out DIR [--per-shard N] [--prefix train]
    singe-dist shards --digits --out DIR [--size 32] [--per-shard N]
    singe-dist shards --fashion-mnist --out DIR [--source DIR] [--per-shard N]

:func:`register` adds the sub-command to the main parser's subparsers; the handler prints the brace
pattern of each shard set, which is what the reader and the job configs take.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from singe_dist.errors import SingeError

if TYPE_CHECKING:
    from singe_dist.data.convert import ShardSet

DEFAULT_PER_SHARD = 1000


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``shards`` sub-command; its handler is ``args.func``."""
    parser = subparsers.add_parser(
        "shards",
        help="write webdataset shards from an ImageFolder tree, Fashion-MNIST or the bundled digits",
        description="Write webdataset tar shards (<prefix>-000000.tar, ...) and classes.json into --out.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--imagefolder", metavar="DIR", help="ImageFolder tree: DIR/<class>/<image>")
    source.add_argument("--digits", action="store_true", help="the scikit-learn digits, as train-*.tar and val-*.tar")
    source.add_argument("--fashion-mnist", action="store_true",
                        help="Fashion-MNIST (Debian package dataset-fashion-mnist): 60k train-*.tar, 10k val-*.tar")
    parser.add_argument("--out", metavar="DIR", required=True, help="output directory")
    parser.add_argument("--per-shard", type=int, metavar="N",
                        help=f"samples per shard (default: {DEFAULT_PER_SHARD}; 10000 for --fashion-mnist)")
    parser.add_argument("--prefix", help="shard name prefix, --imagefolder only (default: train)")
    parser.add_argument("--size", type=int, help="image side in pixels, --digits only (default: 32)")
    parser.add_argument("--source", metavar="DIR",
                        help="--fashion-mnist only: the folder of its four idx .gz files (default: /usr/share/datasets/fashion-mnist)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert as asked and print one line per shard set; user mistakes raise SingeError."""
    # imported here: building the main parser must not import torch (a config typo fails in a blink)
    from singe_dist.data.convert import FASHION_MNIST_DIR, digits_to_shards, fashion_mnist_to_shards, imagefolder_to_shards

    if args.source is not None and not args.fashion_mnist:
        raise SingeError("--source applies to --fashion-mnist only")
    if args.fashion_mnist:
        if args.prefix is not None or args.size is not None:
            raise SingeError("--prefix and --size do not apply to --fashion-mnist (28x28 images, train-*.tar and val-*.tar)")
        written = fashion_mnist_to_shards(args.out, source=args.source or FASHION_MNIST_DIR,
                                          per_shard=args.per_shard or 10000)
    elif args.digits:
        if args.prefix is not None:
            raise SingeError("--prefix applies to --imagefolder only; --digits writes train-*.tar and val-*.tar")
        written = digits_to_shards(args.out, size=32 if args.size is None else args.size,
                                   per_shard=args.per_shard or DEFAULT_PER_SHARD)
    else:
        if args.size is not None:
            raise SingeError("--size applies to --digits only; --imagefolder keeps the original images")
        prefix = "train" if args.prefix is None else args.prefix
        written = {prefix: imagefolder_to_shards(args.imagefolder, args.out, prefix=prefix,
                                                      per_shard=args.per_shard or DEFAULT_PER_SHARD)}
    for name, shards in written.items():
        print(_summary(name, shards))
    return 0


def _summary(name: str, shards: ShardSet) -> str:
    skipped = f", {shards.skipped} unreadable image(s) skipped" if shards.skipped else ""
    return f"{name}: {shards.samples} samples in {len(shards.paths)} shard(s){skipped}: {shards.pattern}"
