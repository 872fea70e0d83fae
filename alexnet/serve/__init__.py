"""The model as it is served: its two files and MLflow flavor (model_files), the loader an MLflow
model carries for environments without this project (pyfunc_loader), batch prediction and
evaluation with Ray Data (predict), and the pictures and tables of an evaluation (val_report)."""
