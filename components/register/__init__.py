"""Registry components: the MLflow parent run that the stage components nest under."""

from components.register.mlflow_run import close_mlflow_run, open_mlflow_run

__all__ = ["close_mlflow_run", "open_mlflow_run"]
