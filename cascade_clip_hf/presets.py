"""The three zero-shot benchmarks as the original Cascade-CLIP release sets them up.

The facts live in `benchmarks.json` (class names in label order, seen/unseen split, prompt-token counts, tapped
layers, templates, sliding window, training recipe and the original authors' reported results).
"""

import json
import re
from functools import cache
from pathlib import Path

from .configuration_cascade_clip import SETTINGS


BENCHMARKS = ("coco-stuff-164k", "pascal-voc-2012", "pascal-context-59")
# Benchmarks whose label maps store background as 0 and class k as k + 1: their labels are reduced on loading.
BACKGROUND_ZERO_BENCHMARKS = ("pascal-voc-2012", "pascal-context-59")
# The original head fuses the first three tapped layers into stage one and the next three into stage two.
LAYERS_PER_STAGE = 3


@cache
def load_benchmarks() -> dict:
    """The whole `benchmarks.json`, keyed by benchmark name (plus `_common`, the shared recipe)."""
    return json.loads(Path(__file__).with_name("benchmarks.json").read_text())


def benchmark_facts(benchmark: str, setting: str | None = None) -> dict:
    """One benchmark's facts; with `setting`, merged with that setting's own entries."""
    benchmarks = load_benchmarks()
    if benchmark not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {benchmark!r}: choose one of {', '.join(BENCHMARKS)}.")
    facts = dict(benchmarks[benchmark])
    if setting is not None:
        if setting not in SETTINGS:
            raise ValueError(f"Unknown setting {setting!r}: choose one of {', '.join(SETTINGS)}.")
        facts.update(facts[setting])
    return facts


def stages_from_layers(extract_layers: list[int]) -> list[list[int]]:
    """Groups tapped layers into cascade stages the way the original head slices them."""
    return [list(extract_layers[i : i + LAYERS_PER_STAGE]) for i in range(0, len(extract_layers), LAYERS_PER_STAGE)]


def preset_config_kwargs(benchmark: str, setting: str) -> dict:
    """Keyword arguments of `CascadeClipConfig` for one benchmark and setting, on ViT-B/16 at 512x512."""
    facts = benchmark_facts(benchmark, setting)
    return {
        "vision_config": {"image_size": 512, "patch_size": 16, "projection_dim": 512},
        "text_config": {"projection_dim": 512},
        "id2label": dict(enumerate(facts["class_names"])),
        "seen_class_ids": facts["seen_class_ids"],
        "setting": setting,
        "num_prompt_tokens": facts["num_prompt_tokens"],
        "cascade_stages": stages_from_layers(facts["extract_layers"]),
        "templates": facts["templates"],
        "slide_crop_size": facts["slide_crop"],
        "slide_stride": facts["slide_stride"],
    }


def default_train_steps(benchmark: str, setting: str) -> int:
    """The original's iteration count for a benchmark and setting, read from its config file's name (e.g. `_80k_`)."""
    config_file = benchmark_facts(benchmark, setting)["config_file"]
    return int(re.search(r"_(\d+)k_", config_file)[1]) * 1000
