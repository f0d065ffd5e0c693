"""Screenshots of what a reader opens: the MLflow comparison view and the report's front page.

    .venv/bin/python scripts/screenshot_views.py --results results --out /tmp/views

Starts ``mlflow ui`` with the command ``python -m detnas report`` prints for ``--results``, opens the
comparison address it prints in headless Chromium (``chromium`` on PATH; Debian: ``apt-get install
chromium``), and screenshots it and ``<results>/report.html`` (when there) into ``--out``: mlflow_view.png,
report.png. Prints what it opened. Nothing here runs in the pipeline or the tests; it is the check a
person runs after changing what the view or the report shows.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--hide-scrollbars"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shoot(browser: str, url: str, png: Path, size: str) -> None:
    subprocess.run([browser, *CHROMIUM, f"--window-size={size}", "--virtual-time-budget=20000",
                    f"--screenshot={png}", url], check=True, capture_output=True, timeout=180)
    print(f"{png}: {url}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    p.add_argument("--experiment", help="default: the config's demo_experiment")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("error: no chromium on PATH (Debian: apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "detnas", "report", "--results", str(args.results), "--config", str(args.config)]
    if args.experiment:
        cmd += ["--experiment", args.experiment]
    printed = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    ui = re.search(r"^MLflow UI:\s+(.*)$", printed, flags=re.M)
    view = re.search(r"^comparison:\s+(\S+)$", printed, flags=re.M)
    if ui is None or view is None:
        sys.exit(f"error: the report printed no MLflow command or comparison view:\n{printed}")
    port = _free_port()
    argv = shlex.split(ui.group(1))
    argv[0] = str(Path(sys.executable).parent / "mlflow")
    argv[argv.index("--port") + 1] = str(port)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen([*argv, "--host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit(f"error: `{ui.group(1)}` did not answer")
                time.sleep(0.5)
        _shoot(browser, view.group(1).replace("127.0.0.1:5000", f"127.0.0.1:{port}"), args.out / "mlflow_view.png",
               "1600,1000")
    finally:
        server.terminate()
        server.wait(30)
    report = args.results / "report.html"
    if report.is_file():
        _shoot(browser, report.resolve().as_uri(), args.out / "report.png", "1600,1600")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
