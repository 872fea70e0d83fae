"""Images -> a Parquet dataset: `ingest(source, dest, IngestOptions(...))`.

The source is listed (sources, cifar: folders, manifests, CIFAR batches), its files hashed and
de-duplicated, checked and encoded by Ray tasks into shards, and the dataset's statistics (stats)
and `dataset.json` committed last (passes). The destination is claimed under a lock (destination,
lock), so two ingests never write one dataset and a killed one leaves the previous version.
"""

from pipelines.ingest.passes import FORMATS, IngestOptions, IngestSummary, ingest, reject_kinds, split_for

__all__ = ["FORMATS", "IngestOptions", "IngestSummary", "ingest", "reject_kinds", "split_for"]
