"""The benchmark scripts run (a smoke test on a tiny model, not a measurement) and refuse to write over a file."""

import json

from .helpers import run_script


def test_user_paths_benchmark_measures_this_tree_beside_the_baseline(tmp_path):
    output = tmp_path / "user_paths.json"
    run_script("benchmark_user_paths.py", ["--tiny", "--only", "d", "--output", str(output)], timeout=600)
    report = json.loads(output.read_text())
    embedding = report["results"]["d"]
    assert embedding["baseline"]["seconds"] > 0 and embedding["current"]["seconds"] > 0
    assert embedding["current"]["text_tower_floor_s"] > 0 and embedding["current"]["embed_over_floor"] > 0
    assert "text_tower_floor_s" not in embedding["baseline"]  # measured on this tree only
    figures = {row["figure"]: row for row in report["figures"]}
    assert figures["first embedding, 171 names x 15 templates"]["ratio"] > 0


def test_a_benchmark_refuses_to_replace_a_users_file_before_measuring(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text("my notes")
    for script in ("benchmark_user_paths.py", "benchmark_inference.py", "benchmark_training.py", "benchmark_onnx.py"):
        result = run_script(script, ["--output", str(mine)], returncode=2)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "mine.json" in errors[0], result.stderr[-2000:]
    assert mine.read_text() == "my notes"
