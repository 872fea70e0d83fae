"""`alexnet ingest SOURCE DEST`: an image dataset -> a sharded, validated Parquet dataset.

SOURCE is auto-detected (force it with --source-type):
  folder    ROOT/<class>/<image>, or ROOT/train/<class>/... + ROOT/val/<class>/... (splits kept)
  manifest  a .csv or .parquet file with `path,label` columns (optional `split`: train|val);
            relative paths are relative to the manifest's folder
  cifar     a CIFAR-10/100 "python version" directory (data_batch_1.., test_batch, batches.meta;
            or train, test, meta) or one batch file; stored as PNG at the native 32 px by default
SOURCE (a folder or a manifest) and DEST may also be URIs such as s3://bucket/prefix; credentials
and endpoints come from the standard AWS_* variables (AWS_ENDPOINT_URL for an S3-compatible
server) or the instance role, never from the URI.
Re-running on a source that gained images appends only the new ones as new shards (a new
dataset version); an unchanged source adds nothing. While an ingest runs, a second one into the
same DEST exits 2 at once. Rejected files are listed with their reason
in DEST/rejects.csv, duplicates (same content) in DEST/duplicates.csv.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    from pipelines.ingest import FORMATS, IngestOptions
    from pipelines.ingest.sources import SOURCE_TYPES

    d = IngestOptions()
    p = sub.add_parser("ingest", help="convert an image dataset into a sharded Parquet dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="image folder tree, manifest (.csv/.parquet) or CIFAR directory/batch file")
    p.add_argument("dest", help="dataset directory (or s3://... URI) to create or append to")
    p.add_argument("--source-type", choices=SOURCE_TYPES, help="force the source type instead of detecting it")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help=f"share put in val when the source has no split (default {d.val_fraction})")
    p.add_argument("--format", dest="image_format", choices=FORMATS,
                   help=f"stored encoding: jpeg, png, or raw uint8 pixels (default {d.image_format}; png for CIFAR)")
    p.add_argument("--resize", type=int,
                   help=f"shorter side in px; 0 keeps the source size (default {d.resize}; 0 for CIFAR)")
    p.add_argument("--raw-size", type=int, default=d.raw_size, help=f"side of the stored square for --format raw (default {d.raw_size})")
    p.add_argument("--quality", type=int, default=d.quality, help=f"JPEG quality when re-encoding (default {d.quality})")
    p.add_argument("--min-side", type=int, default=d.min_side, help=f"reject source images whose shorter side is below this, px (default {d.min_side})")
    p.add_argument("--shard-mb", type=int, default=d.shard_mb, help=f"target shard size in MB (default {d.shard_mb})")
    p.add_argument("--strict", action="store_true", help="fail (exit 2, nothing written) if any file is rejected")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started when not inside a Ray job (default: all)")
    p.set_defaults(func=run)


def options(args, source_type: str):
    """CLI arguments -> IngestOptions; CIFAR defaults to PNG at its native 32 px (no upscaling)."""
    from pipelines.ingest import IngestOptions

    d = IngestOptions()
    cifar = source_type == "cifar"
    fmt = args.image_format or ("png" if cifar else d.image_format)
    resize = args.resize if args.resize is not None else (0 if cifar else d.resize)
    opts = IngestOptions(val_fraction=args.val_fraction, image_format=fmt, resize=resize or None,
                         raw_size=args.raw_size, quality=args.quality, min_side=args.min_side,
                         shard_mb=args.shard_mb, strict=args.strict)
    return opts


def run(args) -> int:
    from jobs.runtime import ray_session
    from pipelines.ingest import ingest
    from pipelines.ingest.sources import detect_source_type

    source_type = args.source_type or detect_source_type(args.source)

    def progress(message: str) -> None:
        print(f"ingest: {message}", file=sys.stderr, flush=True)

    # A bad source or destination is refused (exit 2) before Ray starts.
    s = ingest(args.source, args.dest, options(args, source_type), source_type=source_type, progress=progress,
               ray_session=lambda: ray_session(num_cpus=args.num_cpus))
    for path, reason in s.rejects[:20]:
        print(f"rejected {path}: {reason}")
    if len(s.rejects) > 20:
        print(f"... {len(s.rejects) - 20} more rejects in {s.path}/rejects.csv")
    change = "unchanged" if s.version == s.previous_version else f"was {s.previous_version}" if s.previous_version else "new"
    print(f"{s.path}: version {s.version} ({change}); {s.seconds:.1f} s")
    print(f"  added {s.added} images in {s.new_shards} new shards, {s.already_present} already present, "
          f"{s.duplicates} duplicates, {len(s.rejects)} rejected")
    if s.rejects:
        print("  rejected by reason: " + ", ".join(f"{kind} {n}" for kind, n in s.rejects_by_kind.items()))
    for split, per_class in s.counts.items():
        print(f"  {split}: {sum(per_class.values())} images in {len(per_class)} classes")
    return 0
