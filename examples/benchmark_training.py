"""Full-size training-step benchmark: ViT-B/16 at 512x512, the COCO-Stuff inductive vocabulary (156 seen classes).

Times complete optimizer steps (forward, the original's loss, backward, AdamW) on random images and labels, after
one warm-up step, and reports seconds per step, images per second and peak memory, in a fresh process. On CPU
peak memory is the process's peak resident set size (weights included); on CUDA the peak of allocated memory.

    python examples/benchmark_training.py --device cpu --batch_size 4 --steps 2 --output benchmarks/training_cpu.json
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
from cascade_clip_hf.training import parameter_groups, training_vocabulary


def measure(device: str, dtype_name: str, batch_size: int, steps: int, crop_size: int, checkpointing: bool) -> dict:
    torch.manual_seed(0)
    config = CascadeClipConfig.from_preset("coco-stuff-164k", "inductive")
    model = CascadeClipForZeroShotSegmentation(config).to(device)
    model.freeze_pretrained()
    if checkpointing:
        model.activation_checkpointing_enable()
    model.train()
    vocabulary = training_vocabulary(config.num_labels, config.seen_class_ids, "inductive")
    class_embeds = torch.nn.functional.normalize(torch.randn(len(vocabulary.class_ids), config.projection_dim), dim=-1)
    class_embeds = class_embeds.to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, 2e-5, 0.01))
    pixel_values = torch.randn(batch_size, 3, crop_size, crop_size, device=device)
    labels = torch.randint(0, config.num_labels, (batch_size, crop_size, crop_size), device=device)
    labels[:, : crop_size // 8] = 255
    labels = vocabulary.labels(labels)
    autocast = torch.autocast(device_type=device, dtype=getattr(torch, dtype_name), enabled=dtype_name != "float32")

    def step():
        with autocast:
            loss = model(pixel_values=pixel_values, class_embeds=class_embeds, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timing = time_runs(step, steps, device)
    seconds = timing["median_s"]
    return {
        "device": device,
        "dtype": dtype_name,
        "batch_size": batch_size,
        "crop_size": crop_size,
        "num_classes": len(vocabulary.class_ids),
        "activation_checkpointing": checkpointing,
        "seconds_per_step": round(seconds, 3),
        "images_per_s": round(batch_size / seconds, 3),
        "peak_memory_mib": timing["peak_memory_mib"],
        "steps": steps,
    }


def main() -> None:
    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    add_device_and_dtypes_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=4, help="images per step")
    parser.add_argument("--crop_size", type=int, default=512, help="side of the square crops (pixels)")
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps")
    parser.add_argument("--activation_checkpointing", nargs="+", type=int, default=[0], help="1: recompute layers")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()
    check_report_paths(parser, args.output)
    context = multiprocessing.get_context("spawn")
    results = []
    for dtype_name in args.dtypes:
        for checkpointing in args.activation_checkpointing:
            with context.Pool(1) as pool:
                config = (args.device, dtype_name, args.batch_size, args.steps, args.crop_size, bool(checkpointing))
                results.append(pool.apply(measure, config))
            print(json.dumps(results[-1]), flush=True)
    report = {
        "machine": machine_description(args.device),
        "model": "ViT-B/16, 512x512, COCO-Stuff inductive (156 seen classes)",
        "results": results,
    }
    write_report(args.output, report)


if __name__ == "__main__":
    main()
