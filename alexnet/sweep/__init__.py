"""Hyperparameter sweeps (`alexnet tune`): a search space over the config, Ray Tune running one real
training run per trial (alexnet.train), each a child MLflow run, and the best model registered by
the champion rule (alexnet.run). Sits above alexnet.run: a sweep is many runs."""
