"""bench_step's profile summary on a hand-made timeline (the CLI itself: test_cli.py)."""

import pytest

from matpac_jax.tools import bench_step

OPS = {  # name -> (shape, kind, dot FLOPs), as hlo_ops returns them
    "add.1": ("f32[4]", "loop_fusion{add}", 0),
    "add.2": ("f32[4]", "loop_fusion{add}", 0),
    "dot.1": ("f32[4,4]", "dot", 10**9),
    "ynn.1": ("f32[8,8]", "ynn_fusion{dot}", 4 * 10**9),
}
MS = 10**6  # ns

# ms:  add.1 [0, 100); dot.1 [100, 110), an asynchronous dot, then nothing until 300;
# ynn.1 [300, 500) with add.2 [350, 450) beside it; nothing until add.1 again [600, 700).
EVENTS = [
    (600 * MS, 700 * MS, "add.1"),
    (0, 100 * MS, "add.1"),
    (100 * MS, 110 * MS, "dot.1"),
    (350 * MS, 450 * MS, "add.2"),
    (300 * MS, 500 * MS, "ynn.1"),
]


def test_idle_time_goes_to_the_op_whose_end_opened_it():
    out = bench_step.summarise_ops(EVENTS, OPS, top=10)
    rows = {row["kind"]: row for row in out["top_ops"]}
    assert [row["kind"] for row in out["top_ops"]] == ["loop_fusion{add}", "ynn_fusion{dot}", "dot"]
    add, ynn, dot = rows["loop_fusion{add}"], rows["ynn_fusion{dot}"], rows["dot"]
    assert (add["ops"], add["runs"], add["ms"]) == (2, 3, 300)
    assert "gap_ms" not in add and "gflop_per_s" not in add
    # add.2 ends inside ynn.1: the gap at 500-600 is ynn.1's, not add.2's (the last to start).
    assert ynn["gap_ms"] == 100 and ynn["gflop_per_s"] == round(4e9 / 300e6, 1)
    # The asynchronous dot: 10 ms of event, 190 ms of work after it.
    assert dot["gap_ms"] == 190 and dot["gflop_per_s"] == 5.0
    assert sum(row["share"] for row in rows.values()) == pytest.approx(1.0, abs=1e-3)
    assert add["share"] == pytest.approx(300 / 510, abs=1e-4)
    assert out["timeline"] == {
        "span_ms": 700,
        "no_op_ms": 290,
        "concurrent_ms": 100,
        "no_op_after": {"dot": 190, "ynn_fusion{dot}": 100},
    }


def test_top_limits_the_rows_not_the_timeline():
    out = bench_step.summarise_ops(EVENTS, OPS, top=1)
    assert [row["kind"] for row in out["top_ops"]] == ["loop_fusion{add}"]
    assert out["timeline"]["no_op_ms"] == 290


def test_no_events_is_an_error():
    with pytest.raises(ValueError, match="no op events"):
        bench_step.summarise_ops([], OPS, top=3)
