"""MLflow tracking: one run per stage job. The only module that imports mlflow.

``results/`` is the source of truth and MLflow is the view: every call here catches its own
failures, warns once, and carries on, so a tracking problem never loses or blocks a computed result.

The default store is a SQLite file, ``results/mlflow.db``; ``MLFLOW_TRACKING_URI`` in the
environment (a team's tracking server) overrides it. SQLite allows one writer at a time, so writes
from the jobs of one machine are serialised with a file lock next to the database, and retried.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterator, TypeVar

__all__ = ["StageRun", "default_tracking_uri", "flatten", "git_commit"]

T = TypeVar("T")
_PARAM_MAX = 6000  # MLflow's limit on a param value's length
_METRIC_FLUSH_ROWS = 100
_METRIC_FLUSH_SECONDS = 15.0


def default_tracking_uri(results_dir: str | Path = "results") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file under ``results_dir``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = Path(results_dir).resolve() / "mlflow.db"
    return f"sqlite:///{path}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings -> {"a.b.c": "value"} as MLflow params."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            out[key] = text[:_PARAM_MAX]
    return out


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit the workflow runs from ("-dirty" with local changes), or "unknown"."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


class StageRun:
    """An MLflow run for one stage job, used as a context manager.

    ``experiment``: the MLflow experiment (one per pipeline experiment); ``tags``: stage, method,
    experiment, detector, dataset, space, arch, wildcards...; ``params``: the stage's resolved
    settings (nested dicts are flattened). ``enabled=False`` (DDP ranks other than 0) does nothing.
    """

    def __init__(
        self,
        *,
        experiment: str,
        run_name: str,
        tags: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        enabled: bool = True,
        tracking_uri: str | None = None,
        results_dir: str | Path = "results",
    ) -> None:
        self.experiment = experiment
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        self.params = flatten(params or {})
        self.enabled = enabled
        self.results_dir = Path(results_dir)
        self.uri = tracking_uri or default_tracking_uri(results_dir)
        self.run_id: str | None = None
        self._client: Any = None
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._warned = False

    # -- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        db = _sqlite_path(self.uri)
        if db is None:
            yield
            return
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_suffix(db.suffix + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _call(self, what: str, fn: Callable[[], T], attempts: int = 4) -> T | None:
        """Run one tracking call under the lock, retrying; on final failure warn and disable."""
        if not self.enabled:
            return None
        for attempt in range(attempts):
            try:
                with self._locked():
                    return fn()
            except Exception as exc:  # any tracking failure: never let it reach the stage
                if attempt + 1 == attempts:
                    self._warn(f"MLflow {what} failed ({type(exc).__name__}: {exc}); results are kept, "
                               f"tracking is off for this run")
                    self.enabled = False
                    return None
                time.sleep(0.5 * 2**attempt)
        return None

    def _warn(self, message: str) -> None:
        if not self._warned:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            print(f"warning: {message}", flush=True)
            self._warned = True

    # -- the run --------------------------------------------------------------------------------

    def __enter__(self) -> "StageRun":
        if not self.enabled:
            return self
        for name in ("mlflow", "alembic", "sqlalchemy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            from mlflow.tracking import MlflowClient
        except Exception as exc:
            self._warn(f"cannot import mlflow ({exc}); tracking is off")
            self.enabled = False
            return self

        def start() -> str:
            client = MlflowClient(tracking_uri=self.uri)
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                location = None
                if _sqlite_path(self.uri) is not None:
                    location = (self.results_dir.resolve() / "mlflow-artifacts" / self.experiment).as_uri()
                try:
                    # the MLflow 3 UI then opens these experiments on their runs ("Model training")
                    exp_id = client.create_experiment(self.experiment, artifact_location=location,
                                                      tags={"mlflow.experimentKind": "custom_model_development"})
                except Exception:  # created meanwhile by another job (tracking server)
                    exp = client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
            tags = {"git_commit": git_commit(), "host": socket.gethostname(), **self.tags}
            run = client.create_run(exp_id, tags=tags, run_name=self.run_name)
            self._client = client
            return run.info.run_id

        self.run_id = self._call("start run", start)
        if self.run_id is not None and self.params:
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in self.params.items()]
            for i in range(0, len(params), 100):  # log_batch takes at most 100 params
                self._call("log params", lambda chunk=params[i:i + 100]: self._client.log_batch(self.run_id, params=chunk))
        return self

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffered; written every ~100 values or 15 s, and at the end."""
        if not self.enabled or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if len(self._pending) >= _METRIC_FLUSH_ROWS or time.monotonic() - self._last_flush > _METRIC_FLUSH_SECONDS:
            self.flush()

    def log_progress(self, row: dict[str, float]) -> None:
        """A ``Progress`` row: every value but ``step``, at that step."""
        self.log_metrics({k: v for k, v in row.items() if k != "step"}, int(row["step"]))

    def flush(self) -> None:
        if not self._pending or self.run_id is None:
            self._pending = []
            return
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 1000):  # log_batch takes at most 1000 metrics
            self._call("log metrics", lambda chunk=pending[i:i + 1000]: self._client.log_batch(self.run_id, metrics=chunk))
        self._last_flush = time.monotonic()

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        for k, v in tags.items():
            self._call("set tag", lambda k=k, v=v: self._client.set_tag(self.run_id, k, str(v)))

    def log_artifacts(self, *paths: str | Path) -> None:
        """Small outputs (metrics.json, plots, CSVs); missing files are skipped."""
        if self.run_id is None:
            return
        for p in paths:
            if Path(p).is_file():
                self._call(f"log artifact {p}", lambda p=p: self._client.log_artifact(self.run_id, str(p)))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.run_id is None:
            return
        self.flush()
        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        self._call("end run", lambda: self._client.set_terminated(self.run_id, status))
