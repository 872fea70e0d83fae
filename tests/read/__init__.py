"""Read: a Parquet dataset -> augmented batches (Ray Data, and the GPU path's plans)."""
