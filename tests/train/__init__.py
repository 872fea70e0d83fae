"""Training: config, networks, the driver and the Ray Train workers, checkpoints and clusters."""
