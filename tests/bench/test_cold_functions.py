"""bench/cold.py's per-function attribution: callgrind_annotate's table read right (every
count form, header code inlined into a function counted with it) and tether's lines beyond
raw's worked out per request. The valgrind run itself is exercised by a full bench run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import cold  # bench/ holds scripts, not a package: imported from its directory

ANNOTATED = """\
--------------------------------------------------------------------------------
Ir                   ILmr            DLmr                DLmw
--------------------------------------------------------------------------------
740,873,175 (100.0%) 573,873 (100.0%) 36,667,829 (100.0%) 36,056,780 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                   ILmr            DLmr                DLmw                 file:function
--------------------------------------------------------------------------------
 37,634,502 ( 5.08%) 38,005 ( 6.62%)     62,163 ( 0.17%)      2,771 ( 0.01%)  Python/ceval.c:_PyEval_EvalFrameDefault'2 [/usr/lib/libpython3.11.so.1.0]
  1,000,000 ( 0.10%)  1,000 ( 0.10%)        100 ( 0.00%)          .           Python/ceval.c:_PyEval_EvalFrameDefault [/usr/lib/libpython3.11.so.1.0]
     86,243 ( 0.01%) 12,676 ( 2.21%)      7,554 ( 0.02%)          .           /src/tether/_speedups.c:pool_connection [/src/tether/_speedups.cpython-311-x86_64-linux-gnu.so]
     11,608 ( 0.00%)    541 ( 0.09%)        270 ( 0.00%)      1,884 ( 0.01%)  /include/python3.11/object.h:pool_connection
     23,313 ( 0.00%)      0                   0               2,121 ( 0.01%)  /include/python3.11/object.h:_PyType_Lookup [/usr/lib/libpython3.11.so.1.0]
     13,750 ( 0.00%)  1,079 ( 0.19%)      1,076 ( 0.00%)        269 ( 0.00%)  ???:0x0000000000027860 [/usr/lib/x86_64-linux-gnu/libmariadb.so.3]
"""  # noqa: E501


def test_parse_functions_reads_every_count_form_and_merges_a_functions_rows() -> None:
    got = cold.parse_functions(ANNOTATED)
    assert got == {
        # a recursion level ('2) and the function itself: one function
        "_PyEval_EvalFrameDefault (libpython3)": [38_634_502, 39_005, 62_263, 2_771],
        # its own rows and the header code inlined into it (that row names no object)
        "pool_connection (_speedups)": [97_851, 13_217, 7_824, 1_884],
        "_PyType_Lookup (libpython3)": [23_313, 0, 0, 2_121],
        "0x0000000000027860 (libmariadb)": [13_750, 1_079, 1_076, 269],
    }


def test_parse_functions_ignores_everything_before_the_table() -> None:
    assert cold.parse_functions(ANNOTATED.split("file:function", maxsplit=1)[0]) == {}


def test_over_raw_is_per_request_and_most_first() -> None:
    lo, hi = cold.LOW, cold.HIGH
    n = hi - lo
    totals = {"Ir": 0}
    raw_low = {"f (x)": [0, 10, 10, 0], "shared (x)": [0, 5, 5, 5]}
    raw_high = {"f (x)": [0, 10 + n, 10, 0], "shared (x)": [0, 5 + n, 5 + n, 5]}
    ours_low = {"shared (x)": [0, 5, 5, 5], "ours (t)": [0, 0, 0, 0]}
    ours_high = {"shared (x)": [0, 5 + 2 * n, 5 + n, 5 + n], "ours (t)": [0, 3 * n, n, n]}
    got = {
        ("raw held connection", lo): (totals, raw_low),
        ("raw held connection", hi): (totals, raw_high),
        ("tether Pool", lo): (totals, ours_low),
        ("tether Pool", hi): (totals, ours_high),
    }
    rows = cold.over_raw(got, "tether Pool")
    # per request: ours +3 code +2 data; shared +1 code +1 data; f only in raw: -1 code
    assert rows == [("ours (t)", 3.0, 2.0), ("shared (x)", 1.0, 1.0), ("f (x)", -1.0, 0.0)]
    lines = cold.functions_lines("mysqlclient", cold.Cold({}, {"tether Pool": rows}))
    assert lines[0].startswith("*tether Pool, mysqlclient: where its +6 lines are.*")
    assert "By object: t +5, x +1." in lines[0]
    assert "| `ours (t)` | +3.0 | +2.0 | +5.0 |" in lines


def test_no_per_function_counts_no_table() -> None:
    empty = {
        ("raw held connection", cold.LOW): ({}, {}),
        ("raw held connection", cold.HIGH): ({}, {}),
    }
    got = {**empty, ("tether Pool", cold.LOW): ({}, {}), ("tether Pool", cold.HIGH): ({}, {})}
    assert cold.over_raw(got, "tether Pool") == []
    assert cold.functions_lines("pymysql", cold.Cold({}, {})) == []


def test_the_median_layout_is_the_typical_run() -> None:
    assert cold.median_layout({0: 300.0, 1: 360.0, 2: 290.0}) == 0
    assert cold.median_layout({0: 360.0, 1: 300.0, 2: 300.0}) == 2  # ties: the later layout
    assert cold.median_layout({0: 5.0}) == 0


def test_the_table_shows_the_spread_over_layouts() -> None:
    rows = {
        "raw held connection": {"ir": 10.0, "code": 100.0, "data": 50.0, "low": 148, "high": 152},
        "tether Pool": {"ir": 12.0, "code": 120.0, "data": 60.0, "low": 175, "high": 230},
    }
    lines = cold.table_lines("pymysql", rows)
    assert "| tether Pool | 12 | 120 | 60 | 180 | +30 (+20%) | 175-230 |" in lines
    assert "| raw held connection | 10 | 100 | 50 | 150 |  | 148-152 |" in lines
