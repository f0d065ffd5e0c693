"""Printed numbers keep their size: a tiny mmAP is not 0.0000."""

import io

import pandas as pd

from detnas.formatting import fmt_number


def test_small_values_keep_their_significant_digits():
    assert fmt_number(1.3e-06) == "1.3e-06"
    assert fmt_number(0.000912) == "0.000912"
    assert fmt_number(2e-5, 5) == "2e-05"
    assert fmt_number(-4.56e-7) == "-4.56e-07"


def test_ordinary_values_keep_fixed_decimals():
    assert fmt_number(0.36612) == "0.3661"
    assert fmt_number(0.001) == "0.0010"
    assert fmt_number(0.0) == "0.0000"
    assert fmt_number(123.0, 1) == "123.0"
    assert fmt_number(None) == "-"
    assert fmt_number(float("nan")) == "nan"


def test_csv_and_tables_use_it():
    df = pd.DataFrame({"method": ["detnas", "random"], "AP": [1.3e-06, 0.25]})
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format=fmt_number)
    assert buf.getvalue().splitlines()[1:] == ["detnas,1.3e-06", "random,0.2500"]
