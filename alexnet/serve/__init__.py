"""The model as it is served: its two files and MLflow flavor (model_files), batch prediction and
evaluation with Ray Data (predict), and the pictures and tables of an evaluation (val_report)."""
