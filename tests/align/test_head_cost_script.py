"""benchmarks/gpu_head_cost.py: its accounting (what a drafted token costs, the projection) on tiny CPU shapes."""

from __future__ import annotations

import pytest

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def script():
    return load_benchmark("gpu_head_cost")


def test_which_drafters_step_the_event_model(script) -> None:
    assert script.reads_event_model("event-model")
    assert {n for n in script.ADAPTERS if script.reads_event_model(n)} == {"TokenAdapter", "L1", "L2", "L3", "L4", "L5", "L5F"}


def test_costs_and_projection_add_up(script, tmp_path) -> None:
    results = script.main(["--quick", "--repeats", "1", "--context", "8", "--adapters", "L1,B1,EC",
                           "--mal", "B1=3.0,L1=2.5", "--out", str(tmp_path / "heads.json")])
    rows, verify, step = results["drafters"], results["verify_pass_ms"], results["target_step_ms"]
    assert set(rows) == {"event-model", "L1", "B1", "EC"}
    assert rows["L1"]["draft_ms_per_token"] == pytest.approx(rows["L1"]["head_ms"] + results["event_model_step_ms"])
    assert rows["B1"]["draft_ms_per_token"] == pytest.approx(rows["B1"]["head_ms"])
    assert "start_ms" in rows["EC"] and "start_ms" not in rows["B1"]
    for row in rows.values():
        assert row["c"] == pytest.approx(row["draft_ms_per_token"] / verify)
    assert rows["B1"]["projected_speedup"] == pytest.approx(3.0 * step / (5 * rows["B1"]["draft_ms_per_token"] + verify))
    assert "projected_speedup" not in rows["EC"]
    assert rows["B1"]["params"] > 0 and (tmp_path / "heads.json").is_file()


def test_a_reprojection_from_stored_costs_measures_nothing_and_uses_the_new_acceptance(script, tmp_path) -> None:
    measured = script.main(["--quick", "--repeats", "1", "--context", "8", "--adapters", "B1,EC",
                            "--mal", "B1=3.0,EC=2.0", "--out", str(tmp_path / "heads.json")])
    again = script.main(["--costs", str(tmp_path / "heads.json"), "--mal", "EC=4.0", "--out", str(tmp_path / "new.json")])
    rows, verify, step = again["drafters"], again["verify_pass_ms"], again["target_step_ms"]
    assert verify == measured["verify_pass_ms"] and rows["EC"]["head_ms"] == measured["drafters"]["EC"]["head_ms"]
    assert rows["EC"]["projected_speedup"] == pytest.approx(4.0 * step / (5 * rows["EC"]["draft_ms_per_token"] + verify))
    assert "projected_speedup" not in rows["B1"] and "mal" not in rows["B1"]  # B1's old acceptance is not kept
