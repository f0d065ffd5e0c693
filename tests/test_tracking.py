import json
import multiprocessing as mp
import sys
import warnings

import pytest

from detnas.tracking import StageRun, flatten


def _log_one(uri: str, i: int) -> None:
    with StageRun(experiment="concurrent", run_name=f"job {i}", tags={"stage": "test", "job": i},
                  params={"i": i, "nested": {"a": 1}}, tracking_uri=uri) as run:
        for step in range(5):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step)


def test_concurrent_jobs_lose_no_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"  # not created yet: the jobs race to create it
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_log_one, args=(uri, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["job"] for r in runs) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 5 for r in runs)
    assert all(r.data.params["nested.a"] == "1" for r in runs)


def test_tracking_failure_warns_and_never_raises(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    uri = f"sqlite:///{blocked}/sub/mlflow.db"  # cannot be created
    with pytest.warns(RuntimeWarning, match="MLflow"):
        with StageRun(experiment="x", run_name="y", tracking_uri=uri) as run:
            run.log_metrics({"loss": 1.0}, 0)
            run.log_artifacts(tmp_path / "missing.json")
            result = "computed"
    assert result == "computed" and run.run_id is None


def test_disabled_run_does_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with StageRun(experiment="x", run_name="y", enabled=False, tracking_uri=f"sqlite:///{tmp_path}/m.db") as run:
            run.log_metrics({"loss": 1.0}, 0)
    assert not (tmp_path / "m.db").exists()


def test_failed_stage_marks_run_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(ZeroDivisionError):
        with StageRun(experiment="x", run_name="y", tracking_uri=uri):
            1 / 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    assert run.info.status == "FAILED"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {}}) == {"a.b": "1", "a.c": "[1, 2]", "d": "x", "e": "{}"}


def test_a_resumed_job_continues_its_run_and_ends_orphans(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    job = dict(experiment="x", run_name="train", tags={"stage": "pretrain", "wildcards": '{"pretrain": "a"}'},
               tracking_uri=uri, results_dir=tmp_path)
    # attempt 1 dies without reaching __exit__ (SIGKILL): its run stays RUNNING
    first = StageRun(**job).__enter__()
    for step in (1, 2, 3):
        first.log_metrics({"loss": 1.0 / step}, step)
    first.flush()
    sys.stdout, sys.stderr = first._streams  # the dead process's output capture goes with it
    # attempt 2 has no checkpoint: it ends the orphan KILLED and opens a new run
    with StageRun(**job) as second:
        second.log_metrics({"loss": 0.5}, 1)
    client = MlflowClient(uri)
    orphan = client.get_run(first.run_id)
    assert orphan.info.status == "KILLED" and "without reporting back" in orphan.data.tags["error"]
    # attempt 3 resumes attempt 2's run from a checkpoint at step 1: steps logged before are not repeated
    with StageRun(**job, resume_run_id=second.run_id) as third:
        assert third.run_id == second.run_id and third.resumed
        for step in (1, 2, 3):
            third.log_metrics({"loss": 0.1 * step}, step)
    run = client.get_run(second.run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(1, 0.5), (2, 0.2), (3, 0.1 * 3)]
    exp = client.get_experiment_by_name("x")
    assert len(client.search_runs([exp.experiment_id])) == 2


def test_other_jobs_runs_are_left_alone(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    running = StageRun(experiment="x", run_name="a", tags={"stage": "s", "wildcards": "1"}, tracking_uri=uri,
                       results_dir=tmp_path).__enter__()
    with StageRun(experiment="x", run_name="b", tags={"stage": "s", "wildcards": "2"}, tracking_uri=uri,
                  results_dir=tmp_path):
        pass
    assert MlflowClient(uri).get_run(running.run_id).info.status == "RUNNING"
    running.__exit__(None, None, None)
    assert MlflowClient(uri).get_run(running.run_id).info.status == "FINISHED"


def test_a_table_is_logged_once_even_when_its_first_attempt_fails_late(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    with StageRun(experiment="x", run_name="table", tracking_uri=uri, results_dir=tmp_path) as run:
        get_run, calls = run._client.get_run, []

        def flaky_get_run(run_id):  # log_table reads the run after writing the file: fail there once
            calls.append(run_id)
            if len(calls) == 1:
                raise ConnectionError("store went away")
            return get_run(run_id)

        run._client.get_run = flaky_get_run
        run.log_table({"method": ["detnas", "random"], "AP": [0.3, None]}, "tables/comparison.json")
    client = MlflowClient(uri)
    path = client.download_artifacts(run.run_id, "tables/comparison.json", str(tmp_path))
    assert json.loads(open(path).read()) == {"columns": ["method", "AP"], "data": [["detnas", 0.3], ["random", None]]}
    assert json.loads(client.get_run(run.run_id).data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "tables/comparison.json", "type": "table"}]  # what makes the UI show it as a table
    assert run.enabled  # one failed attempt does not turn tracking off
