"""The benchmark scripts run (a smoke test on a tiny model, not a measurement) and refuse to write over a file."""

import json

from .helpers import EXAMPLES, load_script, run_script


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


def test_a_tiny_onnx_benchmark_judges_no_full_size_target():
    benchmark = load_script(EXAMPLES / "benchmark_onnx.py")
    backends = {name: {"forward_s": 1.0, "max_abs_logit_difference": 0.0} for name in benchmark.BACKENDS}
    demo = {"bundled": {"scenes": 1, "identical_scenes": 1}, "held_out": {"scenes": 1, "identical_scenes": 1}}
    report = {
        "backends": {**backends, "onnx-int8": {"forward_s": 0.1}},
        "demo": {"backends": {"onnx-float32": {**demo, "overall": 1.0}, "onnx-int8": {"overall": 1.0}}},
        "machine": {"cpu_flags": {"avx512_vnni": True}},
    }
    judged = benchmark.target_rows({**report, "tiny": False})
    assert [row["pass"] for row in judged] == [True] * 4
    tiny = benchmark.target_rows({**report, "tiny": True})
    assert [row["pass"] for row in tiny] == [None] * 4
    assert all("tiny model" in row["report_only"] for row in tiny)
