"""Full-size inference benchmark: ViT-B/16 at 512x512, 171 COCO-Stuff classes, random weights.

Times the test-time path (one 512x512 sliding window: forward, upsampling, calibrated scores) at several batch
sizes and reports latency, images per second and peak memory, each configuration in a fresh process so that peak
memory belongs to it alone. On CPU, peak memory is the process's peak resident set size (weights included); on
CUDA it is the peak of allocated GPU memory.

    python examples/benchmark_inference.py --device cpu --batch_sizes 1 8 --output benchmarks/inference_cpu.json
    python examples/benchmark_inference.py --device cuda --dtypes float32 float16 bfloat16 --attn sdpa eager
"""

import json
import multiprocessing

import torch
from benchmarking import (
    add_device_and_dtypes_arguments,
    check_report_paths,
    machine_description,
    time_runs,
    write_report,
)

from cascade_clip_hf import CascadeClipConfig, CascadeClipForZeroShotSegmentation
from cascade_clip_hf.arguments import CommandLineParser


def build_model(dtype: torch.dtype, attn_implementation: str, device: str) -> CascadeClipForZeroShotSegmentation:
    torch.manual_seed(0)
    config = CascadeClipConfig.from_preset("coco-stuff-164k", "inductive")
    config._attn_implementation = attn_implementation
    model = CascadeClipForZeroShotSegmentation(config)
    model.class_embeddings = torch.nn.functional.normalize(torch.randn_like(model.class_embeddings), dim=-1)
    return model.to(device=device, dtype=dtype).eval()


def measure(device: str, dtype_name: str, attn_implementation: str, batch_size: int, repeats: int) -> dict:
    """Runs in a fresh process: builds the model, warms up, times `repeats` runs."""
    dtype = getattr(torch, dtype_name)
    model = build_model(dtype, attn_implementation, device)
    pixel_values = torch.randn(batch_size, 3, 512, 512, device=device, dtype=dtype)
    with torch.inference_mode():
        timing = time_runs(lambda: model.sliding_window_inference(pixel_values), repeats, device)
    latency = timing["median_s"]
    return {
        "device": device,
        "dtype": dtype_name,
        "attn_implementation": attn_implementation,
        "batch_size": batch_size,
        "latency_s": round(latency, 4),
        "latency_min_s": round(timing["min_s"], 4),
        "images_per_s": round(batch_size / latency, 3),
        "peak_memory_mib": timing["peak_memory_mib"],
        "repeats": repeats,
    }


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| device | dtype | attention | batch | latency (s, median) | images/s | peak memory (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results:
        lines.append(
            f"| {row['device']} | {row['dtype']} | {row['attn_implementation']} | {row['batch_size']} | "
            f"{row['latency_s']:.3f} | {row['images_per_s']:.2f} | {row['peak_memory_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    add_device_and_dtypes_arguments(parser)
    parser.add_argument(
        "--attn", nargs="+", default=["sdpa"], choices=("sdpa", "eager"), help="attention implementations"
    )
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8], help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each setting")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()
    check_report_paths(parser, args.output)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")

    results = []
    context = multiprocessing.get_context("spawn")
    for dtype_name in args.dtypes:
        for attn_implementation in args.attn:
            for batch_size in args.batch_sizes:
                with context.Pool(1) as pool:
                    row = pool.apply(measure, (args.device, dtype_name, attn_implementation, batch_size, args.repeats))
                results.append(row)
                print(markdown_table([row]).splitlines()[-1], flush=True)

    report = {
        "machine": machine_description(args.device),
        "model": "ViT-B/16, 512x512, 171 classes",
        "results": results,
    }
    print(f"\nMachine: {json.dumps(report['machine'])}\n\n{markdown_table(results)}")
    write_report(args.output, report)


if __name__ == "__main__":
    main()
