"""Table 5's random baseline: N retrained random architectures summarized as mean +- std, one row
of the comparison."""

import json
import statistics

import pandas as pd
import pytest

from detnas.stages.compare import run_compare, run_random_archs_summary

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "top1", "mflops")


def _final(path, method, arch, ap, **more):
    final = {"experiment": "x", "method": method, "arch": arch, "mflops": 35.0 + ap, "backbone_params_m": 0.2,
             "AP": ap, "AP50": 2 * ap, "AP75": ap / 2, "APs": None, "APm": ap, "APl": ap, "top1": 0.5 + ap,
             "search_fitness": None, "search_evaluations": 0, "mlflow_run_id": "r", "primary_metric": "AP",
             "primary_value": ap, **more}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(final))
    return path


def test_summary_is_the_mean_and_std_of_the_final_files(tmp_path):
    aps = [0.21, 0.25, 0.2, 1.3e-6]
    finals = [_final(tmp_path / f"random_arch_{i}" / "final.json", f"random_arch_{i}", f"0123012{i}", ap)
              for i, ap in enumerate(aps, start=1)]
    summary = run_random_archs_summary(finals=finals, out=tmp_path / "summary.json", experiment="x",
                                       mlflow={"experiment": "x", "run_name": "summary"})
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 4 and summary["archs"] == ["01230121", "01230122", "01230123", "01230124"]
    for key, values in {"AP": aps, "top1": [0.5 + a for a in aps], "AP50": [2 * a for a in aps]}.items():
        s = summary["metrics"][key]
        assert s["mean"] == pytest.approx(statistics.mean(values))
        assert s["std"] == pytest.approx(statistics.stdev(values))
        assert (s["min"], s["max"]) == (min(values), max(values))
    assert "APs" not in summary["metrics"]  # null in every file: nothing to summarize


def test_comparison_has_one_row_with_mean_and_std(tmp_path, capsys):
    finals = [_final(tmp_path / m / "final.json", m, "00000000", ap) for m, ap in (("detnas", 0.3), ("random", 0.28))]
    archs = [_final(tmp_path / f"ra{i}" / "final.json", f"random_arch_{i}", f"1111000{i}", ap)
             for i, ap in enumerate((0.2, 0.22, 0.27), start=1)]
    run_random_archs_summary(finals=archs, out=tmp_path / "summary.json", experiment="x",
                             mlflow={"experiment": "x", "run_name": "summary"})
    table = run_compare(finals=finals, histories={}, csv_out=tmp_path / "c.csv", png_out=tmp_path / "c.png",
                        experiment="x", mlflow={"experiment": "x", "run_name": "compare"}, random_archs=tmp_path / "summary.json")
    csv = pd.read_csv(tmp_path / "c.csv")
    assert list(csv["method"]) == ["detnas", "random", "random archs (n=3)"]
    row = csv.iloc[2]
    assert row["AP"] == pytest.approx(statistics.mean([0.2, 0.22, 0.27]), abs=1e-4)
    assert row["AP_std"] == pytest.approx(statistics.stdev([0.2, 0.22, 0.27]), abs=1e-4)
    assert csv["AP_std"].isna().tolist() == [True, True, False]
    printed = capsys.readouterr().out
    assert "random archs (n=3)" in printed and f"0.2300 +- {statistics.stdev([0.2, 0.22, 0.27]):.4f}" in printed
    assert (tmp_path / "c.png").stat().st_size > 5000 and len(table) == 3
