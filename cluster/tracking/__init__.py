"""MLflow: runs and metrics, the model registry, reports, plots, result pages and the tracking server."""
