"""A Parquet dataset -> batches for training and evaluation.

loader: the Ray Data streams (one execution per run, equal batches per train worker), whose map
tasks read Parquet row groups and apply a preset; augment: the presets (the paper's crops, flips
and PCA lighting, torchvision's RandomResizedCrop, centre and ten crops) as pure functions of
(seed, epoch, image id); device_augment: the same plans executed on a train worker's GPU.
"""
