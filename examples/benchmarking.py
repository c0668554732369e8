"""What the benchmark scripts share: timing with a warm-up, peak memory, the machine's description, the report."""

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers


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


# The CPU features that decide how fast fp32 and bf16 matmuls can be.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpuinfo_field(name: str) -> str | None:
    """The value of the first `name` line of /proc/cpuinfo; None where there is no such file or line."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text(encoding="utf-8").splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return None


def load_average() -> list[float]:
    """The system's load average over 1, 5 and 15 minutes."""
    return [round(value, 2) for value in os.getloadavg()]


def machine_description(device: str) -> dict:
    """
    The machine a figure was measured on: CPU, its matmul-relevant flags, cores, total memory (GiB, the machine's,
    not a container's limit), threads, versions and date.
    """
    flags = set((cpuinfo_field("flags") or "").split())
    description = {
        "cpu": cpuinfo_field("model name") or platform.processor() or platform.machine(),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device == "cuda":
        description["gpu"] = torch.cuda.get_device_name()
    return description


def add_device_and_dtypes_arguments(parser) -> None:
    """`--device` (the GPU where there is one) and `--dtypes` (the number formats to measure), as every benchmark
    of the model on one device takes them."""
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        choices=("cpu", "cuda"),
        help="where to run",
    )
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32"], choices=("float32", "float16", "bfloat16"), help="number formats"
    )


def check_report_paths(parser, *paths: str | None) -> None:
    """Ends the script before it measures anything, in one line, where writing a report to a path would replace a
    file this program did not write as a benchmark report (see `write_text`)."""
    from cascade_clip_hf.arguments import check_output_argument
    from cascade_clip_hf.atomic import BENCHMARK

    for path in filter(None, paths):
        check_output_argument(parser, Path(path).parent, [Path(path).name], kind=BENCHMARK)


def write_text(path: str | None, text: str) -> None:
    """Writes `text` to `path`, when one is given, atomically and never over a file this program did not write."""
    # Imported here: benchmark workers import this module beside the code of an older revision, which may lack it.
    from cascade_clip_hf.atomic import BENCHMARK, forget_identities, output_files

    if path:
        folder = Path(path).resolve().parent
        with output_files(folder, BENCHMARK) as staging:
            (staging / Path(path).name).write_text(text, encoding="utf-8")
        if folder.is_relative_to(Path(__file__).resolve().parent.parent):  # committed to the repository
            forget_identities(folder)


def write_report(path: str | None, report: dict) -> None:
    """Writes the report as JSON to `path`, when one is given (see `write_text`)."""
    write_text(path, json.dumps(report, indent=2) + "\n")
