"""What listing a source yields (pipelines.ingest.sources for folders and manifests, pipelines.ingest.cifar for
CIFAR batches): the items to ingest, before any decoding."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    path: str  # a file path, or `BATCHFILE#INDEX` for a CIFAR image
    label_name: str
    split: str | None  # None: ingest assigns it from the image's id


@dataclass(frozen=True)
class Listing:
    classes: list[str]  # the label of a class is its index here (sorted, or the source's own order)
    items: list[Item]
    rejects: list[tuple[str, str]]  # (path, reason) found while listing
    has_splits: bool
