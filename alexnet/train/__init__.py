"""What runs in and around the Ray Train workers.

Driver side: fit (inputs checked, workers placed, TorchTrainer run, its outcome), progress (the
run's terminal line). Worker side: loop
(the per-worker loop: build, resume, train/evaluate/report each epoch), epochs (plain PyTorch
epoch functions), device_input (the GPU path's feeder), val_batches (val kept in
memory), checkpoint (the files a run resumes from).
"""
