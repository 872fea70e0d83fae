"""`alexnet ingest SOURCE DEST`: an image dataset -> a sharded, validated Parquet dataset.

SOURCE is an image-folder tree (ROOT/<class>/<image>, or ROOT/train/<class>/... + ROOT/val/...).
Re-running on a source that gained images appends only the new ones as new shards. Rejected
files are listed with their reason in DEST/rejects.csv.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from pipelines.ingest import IngestOptions

    d = IngestOptions()
    p = sub.add_parser("ingest", help="convert an image dataset into a sharded Parquet dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="image folder tree")
    p.add_argument("dest", help="dataset directory to create or append to")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help=f"share put in val when the source has no split (default {d.val_fraction})")
    p.add_argument("--format", dest="image_format", default=d.image_format, choices=("jpeg", "png", "raw"), help="stored encoding (default jpeg)")
    p.add_argument("--resize", type=int, default=d.resize, help=f"shorter side in px; 0 keeps the source size (default {d.resize})")
    p.add_argument("--raw-size", type=int, default=d.raw_size, help=f"side of the stored square for --format raw (default {d.raw_size})")
    p.add_argument("--quality", type=int, default=d.quality, help=f"JPEG quality when re-encoding (default {d.quality})")
    p.add_argument("--min-side", type=int, default=d.min_side, help=f"reject images whose shorter side is below this, px (default {d.min_side})")
    p.add_argument("--shard-mb", type=int, default=d.shard_mb, help=f"target shard size in MB (default {d.shard_mb})")
    p.add_argument("--strict", action="store_true", help="fail if any file is rejected")
    p.set_defaults(func=run)


def run(args) -> int:
    from jobs.runtime import ray_session
    from pipelines.ingest import IngestOptions, ingest

    opts = IngestOptions(val_fraction=args.val_fraction, image_format=args.image_format, resize=args.resize or None,
                         raw_size=args.raw_size, quality=args.quality, min_side=args.min_side,
                         shard_mb=args.shard_mb, strict=args.strict)
    opts.validate()
    with ray_session():
        s = ingest(args.source, args.dest, opts)
    for path, reason in s.rejects:
        print(f"rejected {path}: {reason}")
    print(f"{s.path}: version {s.version}; added {s.added} images in {s.new_shards} new shards, "
          f"{s.already_present} already present, {s.duplicates} duplicates, {len(s.rejects)} rejected "
          f"({s.seconds:.1f} s)")
    for split, per_class in s.counts.items():
        print(f"  {split}: {sum(per_class.values())} images in {len(per_class)} classes")
    return 0
