"""What the benchmark scripts share: timing with a warm-up, peak memory, the machine's description, the report."""

import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from cascade_clip_hf.atomic import output_files


def synchronize(device: str) -> None:
    """Waits for queued GPU work, so that a timer measures it."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_runs(run: Callable[[], None], repeats: int, device: str) -> dict:
    """
    Runs `run` once to warm up, then `repeats` times timed. Returns the median and the fastest duration in seconds,
    and peak memory in MiB: on CUDA the peak of allocated memory over the timed runs, on CPU the process's peak
    resident set size (weights included).
    """
    run()
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        durations.append(time.perf_counter() - start)
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "median_s": statistics.median(durations),
        "min_s": min(durations),
        "peak_memory_mib": round(peak_mib, 1),
    }


def machine_description(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text(encoding="utf-8").splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    description = {
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    if device == "cuda":
        description["gpu"] = torch.cuda.get_device_name()
    return description


def write_report(path: str | None, report: dict) -> None:
    """Writes the report as JSON to `path`, when one is given (never over a file this program did not write)."""
    if path:
        with output_files(Path(path).parent) as staging:
            (staging / Path(path).name).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
