"""`alexnet promote VERSION`: make a registered model version the champion by hand.

Moves the `champion` alias to VERSION whatever the recorded numbers say, and records on the
version that this was a manual decision (tag `decision`, `decision.reason`, description).
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from jobs.runtime import add_store_options

    p = sub.add_parser("promote", help="give a registered model version the champion alias",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", help="model version number, e.g. 3")
    p.add_argument("--name", default="alexnet", help="registered model name (default: alexnet)")
    add_store_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from alexnet.track.tracking import client_for

    from alexnet.track.registry import promote
    from jobs.runtime import existing_store

    decision = promote(client_for(existing_store(args)), args.name, args.version)
    print(f"models:/{args.name}@champion -> version {args.version} ({decision.reason})")
    return 0
