"""The rehearsal wrapper (detnas rehearse) and the plan (detnas plan): timing read from a stage's
files, failures recorded with their error line, the command's process group killed on SIGTERM;
predictions, flags and the parallel wall-clock of hand-made rehearsals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detnas.cli import main
from detnas.formatting import fmt_duration
from detnas.stages.plan import format_plan, make_plan, schedule

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _training_script(metrics: Path, code: int, message: str = "") -> list[str]:
    """A stand-in stage: writes a metrics.json of 40 steps logged every 5 (8 images per step; the
    first rows slow, as a warm-up is), prints ``message`` and exits ``code``."""
    rows = [{"step": s, "loss": 1.0, "images_per_s": 8 / (1.0 if s <= 10 else 0.1 + 0.01 * (s % 3)), "data_s": 0.02}
            for s in range(5, 41, 5)]
    extra = {"loader_images_per_s": 50.0, "loader_workers": 3, "world_size": 1, "peak_gpu_memory_mb": None}
    body = (f"import json, sys; json.dump({{'iterations': 40, 'history': {rows!r}, **{extra!r}}}, "
            f"open({str(metrics)!r}, 'w')); "
            f"print('step 40/40'); print({message!r}); sys.exit({code})")
    return [sys.executable, "-c", body]


def _rehearse(tmp_path: Path, command: list[str], stage: str = "pretrain_supernet", **kw) -> subprocess.CompletedProcess:
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    return subprocess.run([sys.executable, "-m", "detnas", "rehearse", "--stage", stage, "--out", str(tmp_path / "r.json"),
                           "--log", str(tmp_path / "r.log"), *extra, "--", *command],
                          env=ENV, capture_output=True, text=True, timeout=120)


def test_fmt_duration_reads_as_seconds_minutes_hours_days():
    assert [fmt_duration(x) for x in (45, 750, 7.3 * 3600, 3.2 * 86400, None)] == \
        ["45 s", "12.5 min", "7.3 h", "3.2 days", "-"]


def test_rehearse_times_the_steps_after_the_warmup(tmp_path):
    metrics = tmp_path / "metrics.json"
    done = _rehearse(tmp_path, _training_script(metrics, 0), metrics=metrics, batch_size=8, warmup_steps=10)
    assert done.returncode == 0, done.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["ok"] and r["returncode"] == 0 and r["error"] is None and r["stage"] == "pretrain_supernet"
    t = r["timing"]
    # rows after step 10: steps 15..40, seconds per step 0.1 + 0.01 * (s % 3): 0.10, 0.11 or 0.12
    assert t["kind"] == "steps" and t["steps"] == 40 and t["timed_rows"] == 6
    assert t["sec_per_step"] == pytest.approx(0.11)
    assert 0.1 - 1e-9 <= t["sec_per_step_p10"] <= t["sec_per_step"] <= t["sec_per_step_p90"] <= 0.12 + 1e-9
    assert t["images_per_s"] == pytest.approx(8 / 0.11)
    # the model's own rate: a step less its 0.02 s wait for the batch; the loader's alone as measured
    assert t["data_s_per_step"] == pytest.approx(0.02) and t["model_images_per_s"] == pytest.approx(8 / 0.09)
    assert t["loader_images_per_s"] == 50.0 and t["loader_workers"] == 3 and t["peak_gpu_memory_mb"] is None
    assert t["overhead_s"] == pytest.approx(max(0.0, r["wall_s"] - 40 * 0.11))
    assert r["peak_rss_mb"] > 1 and r["device"] and r["device_memory_mb"] > 0
    assert "step 40/40" in (tmp_path / "r.log").read_text()


def test_rehearse_records_a_failure_with_its_error_line_and_exits_0(tmp_path):
    metrics = tmp_path / "metrics.json"
    done = _rehearse(tmp_path, _training_script(metrics, 3, "ValueError: batch_size 0 must be positive"),
                     metrics=metrics, batch_size=8)
    assert done.returncode == 0, done.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert not r["ok"] and r["returncode"] == 3 and r["timing"] == {}
    assert r["error"] == "ValueError: batch_size 0 must be positive"
    # no error line in the log: the exit status
    _rehearse(tmp_path, [sys.executable, "-c", "import sys; sys.exit(5)"], metrics=metrics, batch_size=8)
    assert json.loads((tmp_path / "r.json").read_text())["error"] == "exit status 5"
    # the command succeeded but wrote no metrics: not ok, the file named
    (tmp_path / "none.json").unlink(missing_ok=True)
    _rehearse(tmp_path, [sys.executable, "-c", "pass"], metrics=tmp_path / "none.json", batch_size=8)
    r = json.loads((tmp_path / "r.json").read_text())
    assert not r["ok"] and r["returncode"] == 0 and "none.json" in r["error"]


def test_rehearse_with_wrong_arguments_fails(tmp_path):
    done = _rehearse(tmp_path, [sys.executable, "-c", "pass"])  # a training stage without --metrics
    assert done.returncode == 2 and "--metrics" in done.stderr and not (tmp_path / "r.json").exists()


def test_rehearse_search_and_evaluate_timing(tmp_path):
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"evaluations": 3, "seconds_per_candidate": 0.01}))
    assert _rehearse(tmp_path, [sys.executable, "-c", "pass"], stage="search", arch_file=arch).returncode == 0
    t = json.loads((tmp_path / "r.json").read_text())["timing"]
    assert t["kind"] == "candidates" and t["candidates"] == 3 and t["sec_per_candidate"] == 0.01
    final = tmp_path / "final.json"
    final.write_text(json.dumps({"test_images": 20, "test_images_total": 500, "seconds": 0.5}))
    assert _rehearse(tmp_path, [sys.executable, "-c", "pass"], stage="evaluate", final=final).returncode == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["timing"]["kind"] == "images" and r["timing"]["sec_per_image"] == pytest.approx(0.025)
    assert r["timing"]["images"] == 20 and r["timing"]["images_total"] == 500  # a few of the test split
    assert r["timing"]["overhead_s"] == pytest.approx(max(0.0, r["wall_s"] - 0.5))


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie is dead
    except FileNotFoundError:
        return True


def test_sigterm_to_the_wrapper_kills_the_command_and_its_children(tmp_path):
    pids = tmp_path / "pids"
    # the command starts a grandchild, writes both pids, and sleeps
    body = (f"import os, subprocess, time; c = subprocess.Popen(['sleep', '300']); "
            f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{c.pid}}'); time.sleep(300)")
    wrapper = subprocess.Popen([sys.executable, "-m", "detnas", "rehearse", "--stage", "search", "--out",
                                str(tmp_path / "r.json"), "--log", str(tmp_path / "r.log"), "--arch-file",
                                str(tmp_path / "arch.json"), "--", sys.executable, "-c", body],
                               env=ENV, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (pids.exists() and len(pids.read_text().split()) == 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    child, grandchild = map(int, pids.read_text().split())
    os.killpg(wrapper.pid, signal.SIGTERM)  # as SLURM signals a job: its process group, not the command's
    assert wrapper.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while not (_gone(child) and _gone(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child) and _gone(grandchild)
    assert not (tmp_path / "r.json").exists()


def _rehearsal(stage: str, timing: dict, ok: bool = True, error: str | None = None, peak: float = 1000.0) -> dict:
    return {"stage": stage, "ok": ok, "returncode": 0 if ok else 1, "error": error, "wall_s": 60.0,
            "peak_rss_mb": peak, "device": "cpu", "device_memory_mb": 16000.0, "timing": timing if ok else {}}


def _jobs(tmp_path: Path) -> list[dict]:
    b = tmp_path / "benchmarks"
    (b / "split_detection").mkdir(parents=True)
    (b / "split_detection" / "shapes.tsv").write_text("s\th:m:s\tmax_rss\tcpu_time\n12.5\t0:00:12\t300\t10\n")

    def job(stage, rule, name, methods, gpus=0, **size):
        return {"stage": stage, "name": name, "methods": methods, "gpus": gpus,
                "benchmark": str(b / rule / f"{name.replace(' ', '_')}.tsv"), **size}

    jobs = [job("data", "split_detection", "shapes", ["detnas", "random"]),
            job("data", "split_classification", "imgs", ["detnas", "random"]),  # not run yet: 0 s
            job("pretrain_supernet", "pretrain_supernet", "pretrain supernet", ["detnas", "random"], gpus=2,
                steps=20000),
            job("search", "search", "search detnas", ["detnas"], candidates=100),
            job("search", "search", "search random", ["random"], candidates=100),
            job("search", "search", "search clsnas", ["clsnas"], candidates=100, rehearsal="search_clsnas"),
            job("search", "handcrafted_arch", "shufflenetv2 architecture", ["shufflenetv2"], candidates=0)]
    for m in ("detnas", "random", "shufflenetv2"):
        jobs += [job("retrain_finetune", "retrain_finetune", f"retrain {m} (detector)", [m], gpus=1, steps=5000),
                 job("evaluate", "evaluate", f"evaluate {m}", [m], images=None)]
    return jobs


REHEARSALS = {
    # the loader alone gives 40 images/s with 3 workers, the model takes 80: loader-bound, 7 CPUs per GPU
    "pretrain_supernet": _rehearsal("pretrain_supernet", {"kind": "steps", "steps": 40, "sec_per_step": 0.5,
                                                           "overhead_s": 30.0, "images_per_s": 64.0,
                                                           "model_images_per_s": 80.0, "loader_images_per_s": 40.0,
                                                           "loader_workers": 3}),
    "search_clsnas": _rehearsal("search_clsnas", {"kind": "candidates", "candidates": 3, "sec_per_candidate": 2.0,
                                                  "overhead_s": 5.0}),
    "search": _rehearsal("search", {"kind": "candidates", "candidates": 3, "sec_per_candidate": 20.0,
                                    "overhead_s": 15.0}),
    "retrain_finetune": _rehearsal("retrain_finetune", {"kind": "steps", "steps": 40, "sec_per_step": 2.0,
                                                         "overhead_s": 100.0, "images_per_s": 4.0}, peak=15000.0),
    # 50 of the test split's 400 images rehearsed; 15 GB of the GPU's 16 GB
    "evaluate": {**_rehearsal("evaluate", {"kind": "images", "images": 50, "images_total": 400, "sec_per_image": 0.2,
                                           "overhead_s": 10.0, "peak_gpu_memory_mb": 15000.0}), "device": "GPU X"},
}


def test_plan_predicts_each_job_and_flags(tmp_path):
    plan = make_plan(jobs=_jobs(tmp_path), rehearsals=REHEARSALS, experiment="demo",
                     profile={"parallel_jobs": 4, "runtime_min": 120, "cpus_per_gpu": None})
    pred = {j["name"]: j["pred_s"] for j in plan["jobs"]}
    assert pred["shapes"] == 12.5 and pred["imgs"] == 0.0
    assert pred["pretrain supernet"] == pytest.approx(20000 * 0.5 + 30)
    assert pred["search detnas"] == pytest.approx(100 * 20 + 15) and pred["shufflenetv2 architecture"] == 0
    assert pred["retrain detnas (detector)"] == pytest.approx(5000 * 2 + 100)
    assert pred["search clsnas"] == pytest.approx(100 * 2 + 5)  # its own rehearsal
    assert pred["evaluate detnas"] == pytest.approx(400 * 0.2 + 10)
    gpu = {j["name"]: j["gpu_h"] for j in plan["jobs"]}
    assert gpu["pretrain supernet"] == pytest.approx(2 * 10030 / 3600) and gpu["search detnas"] == 0
    assert plan["total"]["gpu_h"] == pytest.approx((2 * 10030 + 3 * 10100) / 3600)
    assert plan["total"]["job_h"] == pytest.approx(sum(pred.values()) / 3600)
    stages = {s["stage"]: s for s in plan["stages"]}
    assert stages["retrain_finetune"]["jobs"] == 3 and stages["retrain_finetune"]["pred_s_max"] == pytest.approx(10100)
    assert stages["retrain_finetune"]["memory_flag"] and not stages["pretrain_supernet"]["memory_flag"]
    flags = "\n".join(plan["flags"])
    # 10030 s and 10100 s against a 7200 s limit: one resubmission each
    assert "pretrain_supernet: 1 job longer than the profile's runtime limit" in flags and "1 resubmissions" in flags
    assert "retrain_finetune: peak host memory 15000 MB is within 10%" in flags
    assert "evaluate: peak GPU memory 15000 MB is within 10%" in flags and stages["evaluate"]["memory_kind"] == "GPU"
    assert ("pretrain_supernet: loader-bound: the loader alone gives 40.0 images/s, the model takes 80.0; with 3 "
            "loader workers per process (4 CPUs per GPU) it needs about 7") in flags
    assert stages["pretrain_supernet"]["loader"]["cpus_per_gpu_needed"] == 7
    assert stages["search"]["rehearsals"] == ["search", "search_clsnas"]
    assert "set-resources" not in flags  # the 20000 steps have 2 GPUs
    assert "retrain_finetune: trains" not in flags  # 5000 steps is not large


def test_plan_flags_cpu_training_and_keeps_a_failed_stage(tmp_path):
    jobs = _jobs(tmp_path)
    for j in jobs:
        if j["stage"] == "pretrain_supernet":
            j["gpus"] = 0
    failed = {**REHEARSALS, "search": _rehearsal("search", {}, ok=False, error="ValueError: population 0")}
    plan = make_plan(jobs=jobs, rehearsals=failed, experiment="demo",
                     profile={"parallel_jobs": 1, "runtime_min": None, "cpus_per_gpu": None})
    stages = {s["stage"]: s for s in plan["stages"]}
    assert stages["search"]["status"] == "failed" and stages["search"]["error"] == "ValueError: population 0"
    assert all(j["pred_s"] is None for j in plan["jobs"] if j["stage"] == "search" and j["name"] != "search clsnas")
    assert [j["pred_s"] for j in plan["jobs"] if j["name"] == "search clsnas"] == [205.0]  # its own rehearsal
    flags = "\n".join(plan["flags"])
    assert "search: rehearsal FAILED: ValueError: population 0" in flags
    assert "pretrain_supernet: trains 20000 steps on CPU (0 GPUs); set `set-resources: pretrain_supernet: gpu: N`" in flags
    assert "resubmissions" not in flags  # no runtime limit
    assert plan["total"]["predicted"] == plan["total"]["jobs"] - 3


def test_parallel_wall_clock(tmp_path):
    jobs = _jobs(tmp_path)
    one = make_plan(jobs=jobs, rehearsals=REHEARSALS, experiment="demo", profile={"parallel_jobs": 1})
    assert one["total"]["wall_s"] == pytest.approx(sum(j["pred_s"] for j in one["jobs"]))
    many = make_plan(jobs=jobs, rehearsals=REHEARSALS, experiment="demo", profile={"parallel_jobs": 100})
    # the longest chain: split -> pretrain -> search -> retrain -> evaluate (detnas)
    chain = 12.5 + 10030 + 2015 + 10100 + 90
    assert many["total"]["wall_s"] == pytest.approx(chain)
    # two slots, four independent jobs of 1 s: 2 s; a job waits for the earlier stages of its methods only
    small = [{"stage": "search", "methods": [m], "pred_s": 1.0} for m in "abcd"]
    assert schedule(small, 2) == 2.0
    chained = [{"stage": "search", "methods": ["a"], "pred_s": 5.0},
               {"stage": "evaluate", "methods": ["b"], "pred_s": 1.0},
               {"stage": "evaluate", "methods": ["a"], "pred_s": 1.0}]
    assert schedule(chained, 3) == 6.0 and chained[1]["start_s"] == 0.0 and chained[2]["start_s"] == 5.0


def test_plan_command_writes_prints_and_reprints_within_100_columns(tmp_path, capsys):
    jobs = _jobs(tmp_path)
    files = []
    for stage, r in {**REHEARSALS, "search": _rehearsal("search", {}, ok=False, error="ValueError: " + "x" * 150)}.items():
        (tmp_path / f"{stage}.json").write_text(json.dumps(r))
        files.append(f"{stage}={tmp_path / f'{stage}.json'}")
    (tmp_path / "profile.json").write_text(json.dumps({"parallel_jobs": 2, "runtime_min": 60, "cpus_per_gpu": 4}))
    out = tmp_path / "demo" / "plan.json"
    assert main(["plan", "--jobs", json.dumps(jobs), "--rehearsal", *files, "--profile", str(tmp_path / "profile.json"),
                 "--json", str(out), "--md", str(tmp_path / "plan.md")]) == 0
    made = capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert plan["experiment"] == "demo" and plan["device"] == "GPU X, cpu"
    assert set(plan) >= {"experiment", "device", "stages", "total", "flags", "jobs"}
    md = (tmp_path / "plan.md").read_text()
    assert "| retrain_finetune |" in md and "FAILED: ValueError" in md and "Flags:" in md
    assert main(["plan", str(out)]) == 0
    shown = capsys.readouterr().out
    assert shown == made and shown == format_plan(plan) + "\n"
    assert "FAILED" in shown and "flags:" in shown and "retrain_finetune" in shown
    assert all(len(line) <= 100 for line in shown.splitlines()), max(shown.splitlines(), key=len)
    assert main(["plan", str(out), "--md", "x.md"]) == 2  # print or make, not both

    # after the real run, its ledger.json beside the plan: planned against spent, per stage
    spent = {s["stage"]: s for s in plan["stages"] if s["predicted"]}
    ledger = {"stages": [{"stage": k, "jobs": s["jobs"], "wall_h": 2 * s["job_h"], "gpu_h": 2 * (s["gpu_h"] or 0),
                          "cpu_h": 0.0, "max_rss_gb": None} for k, s in spent.items()],
              "total": {"jobs": 1, "wall_h": 2 * plan["total"]["job_h"], "gpu_h": 0.0, "cpu_h": 0.0, "max_rss_gb": None}}
    (out.parent / "ledger.json").write_text(json.dumps(ledger))
    assert main(["plan", str(out)]) == 0
    both = capsys.readouterr().out
    assert both.startswith(made) and "planned against spent" in both
    tail = both[len(made):].splitlines()
    assert all(len(line) <= 100 for line in tail) and sum("2.00x" in line for line in tail) == len(spent) + 1


def test_plan_accuracy_compares_predicted_and_measured_seconds(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from plan_accuracy import accuracy

    jobs = _jobs(tmp_path)
    for j in jobs:  # the real run: each retraining took 10,100 s or 5,050 s, each evaluation 20 s (too short)
        if j["stage"] in ("retrain_finetune", "evaluate"):
            s = 20 if j["stage"] == "evaluate" else (5050 if "detnas" in j["name"] else 10100)
            Path(j["benchmark"]).parent.mkdir(parents=True, exist_ok=True)
            Path(j["benchmark"]).write_text(f"s\tcpu_time\n{s}\t{s}\n")
    plan = make_plan(jobs=jobs, rehearsals=REHEARSALS, experiment="demo", profile={"parallel_jobs": 1})
    rows = accuracy(plan)
    assert [r["stage"] for r in rows] == ["retrain_finetune", "total"]
    assert rows[0]["jobs"] == 3 and rows[0]["measured_s"] == 25250 and rows[0]["predicted_s"] == pytest.approx(30300)
    assert rows[-1]["error_pct"] == pytest.approx(20.0)


def test_each_networks_latency_job_is_predicted_from_the_latency_table_job(tmp_path):
    """A network's latency job: the table job's start-up (its benchmark's seconds less the table's and
    the validation's own) plus one validation backbone's share; before the table exists, none, and the
    plan says so."""
    from detnas.stages.plan import predict_job

    bench = tmp_path / "latency_table.tsv"
    bench.write_text("s\th:m:s\tmax_rss\tcpu_time\n20.0\t0:00:20\t500\t19\n")
    validation = tmp_path / "validation.json"
    validation.write_text(json.dumps({"table_seconds": 12.0, "validation_seconds": 4.0, "n": 10}))
    job = {"stage": "latency", "name": "latency detnas", "methods": ["detnas"], "gpus": 0,
           "benchmark": str(tmp_path / "arch_latency.tsv"), "validation": str(validation),
           "table_benchmark": str(bench)}
    assert predict_job(job, None) == pytest.approx(20.0 - 12.0 - 4.0 + 4.0 / 10)
    missing = {**job, "validation": str(tmp_path / "none.json")}
    assert predict_job(missing, None) is None
    plan = make_plan(jobs=[missing], rehearsals={}, profile={"parallel_jobs": 1}, experiment="x")
    (stage,) = plan["stages"]
    assert stage["stage"] == "latency" and stage["status"] == "not run"
    assert any("latency table is not measured yet" in f for f in plan["flags"])
