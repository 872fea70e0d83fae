"""AlexNet, trained and tracked: one run's story (run), told through its stages.

- `config` (+ `recipes/`): the typed config of a run, and `lr_schedule`, its schedules by name;
- `run`: a training run from checked inputs to a registered model, one call from `jobs/`;
- `demo`: the built-in demo dataset and the demo's run;
- `train/`: the driver and the Ray Train workers (placement, TorchTrainer, the loop, epochs,
  checkpoints, the device input, progress);
- `track/`: everything that speaks to MLflow (runs, metrics, registry, publishing, provenance);
- `serve/`: the model as served (its files, batch prediction and evaluation, the val report);
- `models/`: the networks, plain torch.nn (imported here).

Imports run down: run -> train, track, serve -> models -> pipelines.
"""

from alexnet.models import ARCHITECTURES, build_model, count_parameters

__all__ = ["ARCHITECTURES", "build_model", "count_parameters"]
