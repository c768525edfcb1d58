"""The store through MLflow's own client library: any backend MLflow supports."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from projectrun.stores import AlreadyExists, Experiment, Store


class ClientStore(Store):
    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        # MLflow's INFO lines ("Creating initial MLflow database tables...") are noise here.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=uri)

    @staticmethod
    def _experiment(exp: Any) -> Experiment | None:
        return None if exp is None else Experiment(str(exp.experiment_id), exp.name, exp.lifecycle_stage)

    def get_experiment(self, experiment_id: str) -> Experiment | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._experiment(self.client.get_experiment(experiment_id))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        return self._experiment(self.client.get_experiment_by_name(name))

    def create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.create_experiment(name))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                raise AlreadyExists(name) from None
            raise

    def create_run(self, experiment_id: str, tags: dict[str, str], run_name: str | None,
                   start_time: int) -> str:
        run = self.client.create_run(experiment_id, start_time=start_time, tags=tags, run_name=run_name)
        return str(run.info.run_id)

    def log_batch(self, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        batch = [Param(k, v) for k, v in params.items()]
        for i in range(0, max(len(batch), 1), 100):  # stores cap a batch at 100 params
            self.client.log_batch(run_id, params=batch[i:i + 100],
                                  tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        if status == "RUNNING":
            self.client.update_run(run_id, status=status)
        else:
            self.client.set_terminated(run_id, status, end_time=end_time)

    def log_artifact(self, run_id: str, path: Path, artifact_dir: str) -> None:
        self.client.log_artifact(run_id, str(path), artifact_dir)

    def running_runs(self, experiment_id: str) -> list[tuple[str, dict[str, str]]]:
        runs = self.client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                       max_results=5000)
        return [(str(r.info.run_id), dict(r.data.tags)) for r in runs]

    def run_artifact_uri(self, run_id: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_run(run_id).info.artifact_uri)
        except MlflowException:
            return None

    def run_experiment(self, run_id: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_run(run_id).info.experiment_id)
        except MlflowException:
            return None
