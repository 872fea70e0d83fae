"""Image datasets in, sharded Parquet out; Parquet in, augmented batches out (Ray Data)."""
