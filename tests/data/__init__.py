"""Data: the dataset format, storage (local paths and S3), writes that land whole, decoding, redaction."""
