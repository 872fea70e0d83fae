"""Image data for training, with no Ray Train, MLflow or model in it: the bottom of the import graph.

- `ingest/`: an image source (folders, manifests, CIFAR batches) -> a validated, sharded Parquet
  dataset, written so that a reader sees the previous version or the new one, never half of one;
- `read/`: a Parquet dataset -> decoded, augmented batches streamed through Ray Data (and the
  plans the GPU path executes on the train workers).

Here, what both share: the dataset format and its `dataset.json` (dataset), local paths and
URIs as one kind of location (storage), writes that land whole (atomic), every bytes -> pixels
path (decode), image sizes and extensions (images), imports a cancelled Ray task cannot cut in
half (imports), the error a user can fix (errors), the one rule for hiding credentials
(redaction) and whether a local path is one place for every node of a cluster (shared_folder).
"""
