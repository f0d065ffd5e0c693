"""MLflow tracking: one run per stage job. The only module that imports mlflow.

``results/`` is the source of truth and MLflow is the view: every call here catches its own
failures, warns once, and carries on, so a tracking problem never loses or blocks a computed result.

One job, one run, across retries: a job's run carries a ``job_key`` tag (its MLflow experiment, stage,
wildcards and results folder). A resumed job passes the run id its checkpoint remembers and continues
that run (metrics already logged at a step are not logged again); runs of the same job left RUNNING
by a killed attempt are ended KILLED when the next attempt starts. A failing job tags its run with
the error and attaches the tail of its output.

Metrics are written by a background thread: a training step never waits for the tracking store (a
locked SQLite file, a slow or unreachable server retrying), so rank 0 cannot hold the other ranks of
a multi-GPU job in their next collective. At the end of the run the thread gets ``_DRAIN_SECONDS`` to
write what is queued.

The default store is a SQLite file, ``results/mlflow.db``; ``MLFLOW_TRACKING_URI`` in the
environment (a team's tracking server) overrides it. SQLite allows one writer at a time, so writes
from the jobs of one machine are serialised with a file lock next to the database, and retried.

Results that move: a SQLite store's artifacts sit next to it, in ``mlflow-artifacts/`` beside
``mlflow.db``, and the store records them by relative ``mlflow-artifacts:/<experiment>/...`` URIs
(MLflow's proxied-artifact scheme) instead of absolute paths. The jobs write them straight to that
folder; ``mlflow ui --backend-store-uri sqlite:///<results>/mlflow.db --artifacts-destination
<results>/mlflow-artifacts`` (``ui_command``) serves them from wherever the folder is now, so a copied
or archived ``results/`` opens as it was.

The reader's view: the compare stage stores, on its MLflow experiment, a shared view of the runs page
(MLflow's ``viewStateShareKey``): the evaluate runs of the compared methods, one row each, with the
primary metric, AP50, MFLOPs and parameters as columns, best first. ``view_url`` is its address.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import logging
import os
import posixpath
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

if TYPE_CHECKING:
    import pandas as pd

# MLflow sends usage telemetry by default (it looks up its telemetry host when imported and would send
# run creations, metric batches, versions and an installation id). The pipeline runs on private data:
# off unless the user opts in (MLFLOW_DISABLE_TELEMETRY=false in the environment). Set here, before
# anything imports mlflow (only this module does), and inherited by every process a job starts.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = ["StageRun", "VIEW_KEY", "artifact_root", "read_store", "comparison_view", "default_tracking_uri", "flatten",
           "git_commit", "read_view", "ui_command", "view_url"]

T = TypeVar("T")
_PARAM_MAX = 6000  # MLflow's limit on a param value's length
_METRIC_FLUSH_ROWS = 100
_METRIC_FLUSH_SECONDS = 15.0
_DRAIN_SECONDS = 120.0  # at the end of a run: how long the metrics still queued may take to be written
_TAIL_LINES = 200  # of the job's output, attached to a failed run
_DIED = ("the job ended without reporting back (SIGKILL, out of memory, node failure or a killed Snakemake); "
         "a later attempt of the same job started")


def default_tracking_uri(results_dir: str | Path = "results") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file under ``results_dir``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = Path(results_dir).resolve() / "mlflow.db"
    return f"sqlite:///{path}"


def artifact_root(uri: str) -> Path | None:
    """Where a SQLite store's artifacts are: ``mlflow-artifacts/`` next to the database (None for
    another store, e.g. a tracking server, which keeps its own)."""
    db = _sqlite_path(uri)
    return None if db is None else db.parent / "mlflow-artifacts"


def ui_command(uri: str, port: int = 5000) -> str:
    """The ``mlflow ui`` command that serves ``uri`` with its artifacts (a SQLite store's
    ``mlflow-artifacts/`` folder wherever it is now)."""
    root = artifact_root(uri)
    served = f" --artifacts-destination {root}" if root is not None else ""
    return f"mlflow ui --backend-store-uri {uri}{served} --port {port}"


VIEW_KEY = "detnas-comparison"  # the share key of the comparison view (MLflow's viewStateShareKey)
_VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY  # the experiment tag MLflow's runs page reads it from


def comparison_view(run_ids: list[str], metrics: list[str]) -> dict[str, Any]:
    """The runs page's state (MLflow's shared-view format) that shows exactly the runs ``run_ids``,
    with the method tag and ``metrics`` as columns, sorted by the first metric, highest first.
    ``searchFilter`` and ``orderByKey``/``orderByAsc`` are the filter and order of MLflow's run
    search (``MlflowClient.search_runs``, ``order_by=[f"{orderByKey} DESC"]``) the page runs."""
    ids = ", ".join(f"'{r}'" for r in run_ids)
    return {
        "searchFilter": f"attributes.run_id IN ({ids})",
        "orderByKey": f"metrics.`{metrics[0]}`",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "selectedColumns": ["tags.`method`", *(f"metrics.`{m}`" for m in metrics)],
        "runsHiddenMode": "SHOW_ALL",
    }


def read_view(uri: str, experiment: str) -> tuple[str, dict[str, Any]] | None:
    """(experiment id, the comparison view) as stored on ``experiment`` in ``uri``; None when the
    store, the experiment or its view is not there."""
    if (db := _sqlite_path(uri)) is not None and not db.is_file():
        return None  # MLflow would create an empty store
    try:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:
        return None
    if exp is None or _VIEW_TAG not in exp.tags:
        return None
    return exp.experiment_id, json.loads(exp.tags[_VIEW_TAG])


def view_url(uri: str, experiment: str, port: int = 5000) -> str | None:
    """The address of ``experiment``'s comparison view in ``mlflow ui`` (``ui_command``) on this
    machine, or None without one. ``workflowType=machine_learning`` opens MLflow 3's runs page rather
    than its GenAI pages."""
    found = read_view(uri, experiment)
    if found is None:
        return None
    return (f"http://127.0.0.1:{port}/#/experiments/{found[0]}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def _local_artifacts(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> Any:
    """MLflow's repository for ``mlflow-artifacts:/...`` URIs in this process: with a SQLite store,
    the folder next to the database (what ``mlflow ui --artifacts-destination`` serves); with a
    tracking server, MLflow's own proxy client."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    root = artifact_root(tracking_uri or "")
    if root is None:
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    relative = urllib.parse.unquote(urllib.parse.urlparse(artifact_uri).path).lstrip("/")
    return LocalArtifactRepository((root / relative).as_uri())


def read_store(uri: str | None = None) -> Any:
    """An ``MlflowClient`` of ``uri`` (default: ``MLFLOW_TRACKING_URI``) that also reads a SQLite
    store's artifacts, from the ``mlflow-artifacts/`` folder beside it: MLflow's own client reads
    ``mlflow-artifacts:/`` addresses only through a tracking server. For a notebook or a script that
    reads the results' store in Python."""
    from mlflow.tracking import MlflowClient

    _register_local_artifacts()
    return MlflowClient(tracking_uri=uri)


def _register_local_artifacts() -> None:
    """Route ``mlflow-artifacts:`` URIs through ``_local_artifacts`` (MLflow's own client needs a
    tracking server for them). MLflow's registry of artifact schemes is internal: if it moves, the
    import fails and the caller's tracking call reports it."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    _artifact_repository_registry.register("mlflow-artifacts", _local_artifacts)


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


class _Tee:
    """Passes writes through to ``stream`` and keeps the last ``_TAIL_LINES`` lines."""

    def __init__(self, stream: Any, lines: collections.deque[str]) -> None:
        self.stream, self.lines = stream, lines

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines(keepends=True))
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding...
        return getattr(self.stream, name)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:_PARAM_MAX]


def job_key(experiment: str, tags: dict[str, str], results_dir: str | Path) -> str:
    """Names one job across its attempts: the same MLflow experiment, stage, wildcards (or run name)
    and results folder."""
    ident = [experiment, tags.get("stage", ""), tags.get("wildcards", ""), str(Path(results_dir).resolve())]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


class StageRun:
    """An MLflow run for one stage job, used as a context manager.

    ``experiment``: the MLflow experiment (one per pipeline experiment); ``tags``: stage, method,
    experiment, detector, dataset, space, arch, wildcards...; ``params``: the stage's resolved
    settings (nested dicts are flattened). ``enabled=False`` (DDP ranks other than 0) does nothing.
    ``resume_run_id``: the run a checkpoint of this job remembers; it is continued if it exists.
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
        resume_run_id: str | None = None,
    ) -> None:
        self.experiment = experiment
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        self.params = flatten(params or {})
        self.enabled = enabled
        self.results_dir = Path(results_dir)
        self.uri = tracking_uri or default_tracking_uri(results_dir)
        self.resume_run_id = resume_run_id
        self.run_id: str | None = None
        self.resumed = False
        self._logged: dict[str, float] = {}  # metric -> last step already in the resumed run
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._streams: tuple[Any, Any] | None = None
        self._client: Any = None
        self._exp_id: str | None = None
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._queue: queue.Queue[list[Any] | None] | None = None
        self._writer: threading.Thread | None = None
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

            _register_local_artifacts()
        except Exception as exc:
            self._warn(f"cannot import mlflow ({exc}); tracking is off")
            self.enabled = False
            return self

        def start() -> str:
            client = MlflowClient(tracking_uri=self.uri)
            self._client = client
            exp_id = self._exp_id = self._experiment_id(client)
            tags = {"git_commit": git_commit(), "host": socket.gethostname(),
                    "job_key": job_key(self.experiment, self.tags, self.results_dir), **self.tags}
            run_id = self._reopen(client, exp_id, tags) if self.resume_run_id else None
            running = client.search_runs([exp_id], f"tags.job_key = '{tags['job_key']}' and attributes.status = 'RUNNING'")
            for orphan in running:
                if orphan.info.run_id != run_id:
                    client.set_tag(orphan.info.run_id, "error", _DIED)
                    client.set_terminated(orphan.info.run_id, "KILLED")
            if run_id is None:
                run_id = client.create_run(exp_id, tags=tags, run_name=self.run_name).info.run_id
            return run_id

        self.run_id = self._call("start run", start)
        if self.run_id is not None:
            print(f"MLflow: {'continuing' if self.resumed else 'started'} run {self.run_id} in experiment "
                  f"{self.experiment!r} ({self.uri})", flush=True)
            self._streams = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = _Tee(sys.stdout, self._tail), _Tee(sys.stderr, self._tail)
        if self.run_id is not None and self.params and not self.resumed:
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in self.params.items()]
            for i in range(0, len(params), 100):  # log_batch takes at most 100 params
                self._call("log params", lambda chunk=params[i:i + 100]: self._client.log_batch(self.run_id, params=chunk))
        return self

    def _experiment_id(self, client: Any) -> str:
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if _sqlite_path(self.uri) is not None:  # relative: the store and its artifacts move together
            location = f"mlflow-artifacts:/{urllib.parse.quote(self.experiment, safe='')}"
        try:
            # the MLflow 3 UI then opens these experiments on their runs ("Model training")
            return client.create_experiment(self.experiment, artifact_location=location,
                                            tags={"mlflow.experimentKind": "custom_model_development"})
        except Exception:  # created meanwhile by another job (tracking server)
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def _reopen(self, client: Any, exp_id: str, tags: dict[str, str]) -> str | None:
        """Continue the run ``resume_run_id`` (None if it is gone or elsewhere): RUNNING again, the
        previous attempt's error tag removed, and the last logged step of each metric noted."""
        from mlflow.entities import RunTag

        try:
            run = client.get_run(self.resume_run_id)
        except Exception:  # deleted, or another store
            return None
        if run.info.experiment_id != exp_id or run.info.lifecycle_stage != "active":
            return None
        client.update_run(run.info.run_id, status="RUNNING")
        if "error" in run.data.tags:
            client.delete_tag(run.info.run_id, "error")
        client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for key in run.data.metrics:
            self._logged[key] = max(m.step for m in client.get_metric_history(run.info.run_id, key))
        self.resumed = True
        return run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffered; written every ~100 values or 15 s, and at the end. In a resumed run, a metric
        already logged at ``step`` or later by an earlier attempt is skipped (no duplicate steps)."""
        if not self.enabled or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                          if int(step) > self._logged.get(k, float("-inf"))]
        if len(self._pending) >= _METRIC_FLUSH_ROWS or time.monotonic() - self._last_flush > _METRIC_FLUSH_SECONDS:
            self.flush()

    def log_progress(self, row: dict[str, float]) -> None:
        """A ``Progress`` row: every value but ``step``, at that step."""
        self.log_metrics({k: v for k, v in row.items() if k != "step"}, int(row["step"]))

    def flush(self) -> None:
        """Hand the buffered metrics to the writer thread (the caller does not wait for the store)."""
        if not self._pending or self.run_id is None:
            self._pending = []
            return
        pending, self._pending = self._pending, []
        if self._queue is None:
            self._queue = queue.Queue()
            self._writer = threading.Thread(target=self._write_metrics, args=(self._queue,), name="mlflow-metrics",
                                            daemon=True)
            self._writer.start()
        self._queue.put(pending)
        self._last_flush = time.monotonic()

    def _write_metrics(self, batches: queue.Queue[list[Any] | None]) -> None:
        while (pending := batches.get()) is not None:
            for i in range(0, len(pending), 1000):  # log_batch takes at most 1000 metrics
                self._call("log metrics", lambda chunk=pending[i:i + 1000]: self._client.log_batch(self.run_id, metrics=chunk))

    def _drain(self) -> None:
        """Wait (at most ``_DRAIN_SECONDS``) for the writer thread to write what is queued."""
        if self._writer is None or self._queue is None:
            return
        self._queue.put(None)
        self._writer.join(_DRAIN_SECONDS)
        if self._writer.is_alive():
            self._warn(f"MLflow took over {_DRAIN_SECONDS:.0f} s to write the last metrics; results are kept, "
                       f"the run's curves may lack their last points")
        self._writer = self._queue = None

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        for k, v in tags.items():
            self._call("set tag", lambda k=k, v=v: self._client.set_tag(self.run_id, k, str(v)))

    def log_to_run(self, run_id: str, metrics: dict[str, float]) -> None:
        """``metrics`` (step 0) on another, finished run of the store: the comparison's cost columns
        on each method's evaluate run, computed only once the ledger is in."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and v == v]
        self._call(f"log metrics to run {run_id}", lambda: self._client.log_batch(run_id, metrics=batch))

    def set_view(self, view: dict[str, Any]) -> None:
        """Store ``view`` (``comparison_view``) as the experiment's comparison view (``view_url``)."""
        if self.run_id is None or self._exp_id is None:
            return
        text = json.dumps(view)
        self._call("set the comparison view", lambda: self._client.set_experiment_tag(self._exp_id, _VIEW_TAG, text))

    def log_artifacts(self, *paths: str | Path) -> None:
        """Small outputs (metrics.json, plots, CSVs); missing files are skipped."""
        if self.run_id is None:
            return
        for p in paths:
            if Path(p).is_file():
                self._call(f"log artifact {p}", lambda p=p: self._client.log_artifact(self.run_id, str(p)))

    def log_table(self, data: pd.DataFrame | dict[str, list[Any]], artifact_file: str) -> None:
        """A table (a DataFrame, or a dict of columns) as the JSON artifact ``artifact_file`` (a
        ``.json`` path in the run, e.g. ``comparison.json``) that the MLflow UI shows as a table in the
        run's artifacts and, next to the same table of other runs, in the runs page's artifact view.
        The file holds pandas' "split" layout, ``{"columns": [...], "data": [[row], ...]}``; a missing
        value is null. MLflow appends to a table already at that path, so log each table once per run:
        an attempt retried after its file was written only completes the run's
        ``mlflow.loggedArtifacts`` tag (which tells the UI the file is a table)."""
        if self.run_id is None:
            return
        path = posixpath.normpath(artifact_file)
        attempted = False

        def log() -> None:
            nonlocal attempted
            if attempted:  # an earlier attempt may have written the file, then failed
                listed = self._client.list_artifacts(self.run_id, posixpath.dirname(path) or None)
                if path in {f.path for f in listed}:
                    self._mark_table(path)
                    return
            attempted = True
            self._client.log_table(self.run_id, data, path)

        self._call(f"log table {artifact_file}", log)

    def _mark_table(self, path: str) -> None:
        """Adds ``path`` to the run's ``mlflow.loggedArtifacts`` tag as a table, as ``log_table`` does."""
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        marked = json.loads(self._client.get_run(self.run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        if {"path": path, "type": "table"} not in marked:
            marked.append({"path": path, "type": "table"})
            self._client.set_tag(self.run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(marked))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._streams is not None:
            sys.stdout, sys.stderr = self._streams
            self._streams = None
        if self.run_id is None:
            return
        self.flush()
        self._drain()
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)):  # SIGTERM (preemption, scancel), Ctrl-C
            status = "KILLED"
            self.set_tags({"error": f"stopped ({_one_line(exc) if exc else exc_type.__name__}); a rerun resumes"})
        else:
            status = "FAILED"
            self.set_tags({"error": _one_line(exc) if exc else exc_type.__name__})
            tail = "".join(self._tail) + "\n" + "".join(traceback.format_exception(exc_type, exc, tb))
            self._call("log the output tail", lambda: self._client.log_text(self.run_id, tail, "log_tail.txt"))
        self._call("end run", lambda: self._client.set_terminated(self.run_id, status))
