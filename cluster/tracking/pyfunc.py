"""MLflow "model from code" for the registered interpreter.

MLflow logs this file as source (no pickle); the weights travel as a
safetensors artifact. Input: a DataFrame of signature rows (the Parquet schema
written by ``zoolens signatures extract``); output: one probability column per behavior.
"""

from __future__ import annotations

import mlflow
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel


class InterpreterModel(PythonModel):
    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's own type
        from interpreter.model import load_interpreter

        self.loaded = load_interpreter(context.artifacts["interpreter"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ANN001
        from interpreter.batch import collate
        from zoo.signatures import row_to_record

        records = [row_to_record(row) for row in model_input.to_dict("records")]
        with torch.no_grad():
            logits = self.loaded.model(collate(records, self.loaded.scaler))["behavior_logits"]
        return pd.DataFrame(torch.sigmoid(logits).numpy(), columns=self.loaded.behavior_names)


mlflow.models.set_model(InterpreterModel())
