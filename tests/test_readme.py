"""The README stays true: every command in its ```sh blocks is run here, or by CI (.ci/run).

Commands that would train for minutes or need real data are dry-run through Snakemake; the MLflow
server is started and logged to; anything unrecognised fails this test, so a new README command
comes with its check.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from workflow import ROOT, make_workdir, snakemake

README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()
BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line:
                commands.append(line)
    return commands


COMMANDS = readme_commands()


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0].startswith(".venv/bin/"):
        argv[0] = str(BIN / argv[0].removeprefix(".venv/bin/"))
    elif argv[0] in ("snakemake", "mlflow", "python"):
        argv[0] = str(BIN / argv[0]) if argv[0] != "python" else sys.executable
    return argv


def test_readme_has_the_quickstart():
    assert "make demo" in COMMANDS and "make test" in COMMANDS
    assert "\nmake test\n" in CI and "make demo" in CI  # CI runs the README's test and demo commands


def test_every_command_is_checked():
    unchecked = [c for c in COMMANDS if _how(c) is None]
    assert not unchecked, f"README commands nobody runs: {unchecked}"


def _how(command: str) -> str | None:
    argv = shlex.split(command)
    name = Path(argv[0]).name
    if command in ("make demo", "make test") or argv[0].startswith(".ci/") or "benchmarks/" in command:
        return "ci" if (command in CI or argv[0] in CI or Path(argv[-1]).stem in CI) else None
    if name == "pip":
        return "ci" if "-e '.[test,slurm]'" in (ROOT / "Makefile").read_text() else None
    if name == "snakemake":
        return "dry-run"
    if name == "python" and argv[1:3] == ["-m", "detnas"]:
        return "run"
    if name == "mlflow" or command.startswith("export MLFLOW_TRACKING_URI"):
        return "server"
    return None


@pytest.mark.parametrize("command", [c for c in COMMANDS if _how(c) == "dry-run"])
def test_snakemake_commands_plan(command, tmp_path):
    wd = make_workdir(tmp_path, ROOT / "config" / "config.yaml")
    argv = _argv(command)
    args = argv[1:]
    split = args.index("--") if "--" in args else None
    out = snakemake(wd, "-n", "-p", *args)
    text = out.stdout + out.stderr
    assert "Job stats:" in text or "Nothing to be done" in text
    if "selfcheck:gpu=2" in command:
        assert "python -m detnas.launch --nproc 2 selfcheck --expect-processes 2" in text
    assert split is None or args[split + 1:]


@pytest.mark.parametrize("command", [c for c in COMMANDS if _how(c) == "run"])
def test_detnas_commands_run(command):
    proc = subprocess.run(_argv(command), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, "the MLflow server exited"
        assert time.time() < deadline, f"{url} did not answer"
        time.sleep(0.5)


def _start(command: str, env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen:
    argv = [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], a) for a in _argv(command)]
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    if "--host" in argv:
        argv[argv.index("--host") + 1] = "127.0.0.1"
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_mlflow_commands(tmp_path, monkeypatch):
    """`mlflow ui` on the embedded store answers; `mlflow server` collects a stage's run and artifact."""
    from detnas.tracking import StageRun

    (ui_cmd,) = [c for c in COMMANDS if "mlflow ui" in c]
    (server_cmd,) = [c for c in COMMANDS if "mlflow server" in c]
    (export_cmd,) = [c for c in COMMANDS if c.startswith("export MLFLOW_TRACKING_URI")]
    (tmp_path / "results").mkdir()
    with StageRun(experiment="readme", run_name="local", tracking_uri=f"sqlite:///{tmp_path}/results/mlflow.db"):
        pass
    env = {**os.environ, "PWD": str(tmp_path), "MLFLOW_DIR": str(tmp_path / "server"), "MLFLOW_HOST": "127.0.0.1"}
    (tmp_path / "server").mkdir()
    # both start side by side (each takes seconds to come up); the UI is checked and stopped first
    ui_port, port = _free_port(), _free_port()
    ui = _start(ui_cmd, env, ui_port, tmp_path)
    server = _start(server_cmd, env, port, tmp_path)
    try:
        try:
            _wait_http(f"http://127.0.0.1:{ui_port}/health", ui)
        finally:
            ui.terminate()
            ui.wait(30)
        _wait_http(f"http://127.0.0.1:{port}/health", server)
        uri = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], export_cmd.split("=", 1)[1])
        uri = re.sub(r":\d+$", f":{port}", uri)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        artifact = tmp_path / "metrics.json"
        artifact.write_text("{}")
        with StageRun(experiment="team", run_name="job", tags={"stage": "test"}) as run:
            run.log_metrics({"loss": 1.0}, 0)
            run.log_artifacts(artifact)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        got = client.get_run(run.run_id)
        assert got.data.metrics["loss"] == 1.0 and got.info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(run.run_id)] == ["metrics.json"]
        assert (tmp_path / "server" / "mlflow.db").exists()
    finally:
        server.terminate()
        server.wait(30)
