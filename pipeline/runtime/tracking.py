"""One tracking facade: MLflow on rank 0, nothing elsewhere (and nothing at all with backend ``none``).

The store defaults to a local sqlite file (the file store ``mlruns/`` is refused by current MLflow); a server
URI comes from ``tracking.uri`` or ``MLFLOW_TRACKING_URI``. A resumed job passes the run id it saved in its
checkpoint and continues the same run. A sweep's point names its parent run (``tracking.parent_run``) and
its tags (``tracking.tags``). Metrics are logged asynchronously (a synchronous sqlite write costs
about 5 ms).
"""
from __future__ import annotations

import os
from pathlib import Path

from data_prep.config import flatten
from pipeline.config import TrackingConfig


def param_strings(tree: dict) -> dict[str, str]:
    """MLflow's params: the config's ``section.key`` names, values as text."""
    return {key: str(value) for key, value in flatten(tree).items()}


class Tracker:
    """The do-nothing tracker of non-zero ranks and of ``backend: none``."""

    run_id: str | None = None

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        """End the run; ``KILLED`` marks one stopped early (a resume re-attaches to it)."""


class MlflowTracker(Tracker):
    def __init__(self, cfg: TrackingConfig, run_name: str, run_id: str | None):
        import mlflow

        self._mlflow = mlflow
        uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        mlflow.set_tracking_uri(uri)
        if run_id is None:
            if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(cfg.experiment) is None:
                # artifacts beside the database, not in ./mlruns of whatever directory the job started in
                artifacts = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
                mlflow.create_experiment(cfg.experiment, artifact_location=artifacts.as_uri())
            mlflow.set_experiment(cfg.experiment)
        self._run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                                     tags=None if run_id else cfg.tag_dict())
        self.run_id = self._run.info.run_id

    def log_params(self, params: dict) -> None:
        self._mlflow.log_params(param_strings(params), synchronous=False)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._mlflow.log_metrics(metrics, step=step, synchronous=False)

    def log_text(self, text: str, name: str) -> None:
        self._mlflow.log_text(text, name)

    def log_artifact(self, path: str | Path) -> None:
        self._mlflow.log_artifact(str(path))

    def close(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)


def make_tracker(cfg: TrackingConfig, is_main: bool, run_name: str, run_id: str | None = None) -> Tracker:
    if not is_main or cfg.backend == "none":
        return Tracker()
    return MlflowTracker(cfg, run_name, run_id)
