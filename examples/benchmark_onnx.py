"""ONNX Runtime beside PyTorch on the CPU, in one run: seconds per window, peak memory and class-map agreement.

Full-size Cascade-CLIP (ViT-B/16 at 512x512, the COCO-Stuff preset: 171 classes, random weights, built as
benchmark_user_paths.py builds it) is exported by `export_onnx(..., quantize="int8")`; then four backends run side by
side, each in a fresh process so that its peak memory is its own, with the same threads:
torch float32, torch bfloat16, ONNX Runtime float32 and ONNX Runtime int8. The four processes are loaded first and
then timed in turns, one run of each a round, so that a shared machine's load falls on all four alike.

    forward       one 512x512 window through the image path with the 171 classes: median of --repeats rounds after
                  a warm-up round; the largest absolute logit difference from torch float32 on it
    window path   the same window through the sliding-window path (forward, calibration, class map)
    peak memory   the process's peak resident memory (weights, the timed runs and the photo below included)
    full size     class-map agreement with torch float32 on a random 1024x768 photo (two windows)
    demo model    class-map agreement with torch float32 on the shipped demo model (exported in the run) over
                  examples/scenes and held-out toy-world scenes, as benchmark_user_paths.py measures bf16

    PYTHONPATH=. python examples/benchmark_onnx.py --output benchmarks/onnx_cpu.json --markdown benchmarks/onnx_cpu.md
    PYTHONPATH=. python examples/benchmark_onnx.py --tiny --output /tmp/onnx_tiny.json  # a smoke test
"""

import logging
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image


logger = logging.getLogger("benchmark_onnx")
REPOSITORY = Path(__file__).resolve().parent.parent
BACKENDS = ("torch-float32", "torch-bfloat16", "onnx-float32", "onnx-int8")
REFERENCE = BACKENDS[0]
PHOTO_SIZE = (1024, 768)
# The CPU features that make dynamic int8 fast: 8-bit dot products (VNNI) or AMX tiles.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# A pause before each timed run: the thread pools of the backend that ran last (OpenMP's, ONNX Runtime's) spin a
# while after their work, which would slow the next backend down.
SETTLE_S = 0.2
SCENE_SETS = ("bundled", "held_out")


def load_backend(backend: str, model_dir: str, onnx_dir: str, threads: int):
    """The zero-shot pipeline of `backend`; torch and ONNX Runtime compute with `threads` threads."""
    import torch

    from cascade_clip_hf.onnx_runtime import load_onnx_segmenter
    from cascade_clip_hf.segmenter import load_segmenter

    torch.set_num_threads(threads)
    runtime, dtype = backend.split("-")
    if runtime == "torch":
        return load_segmenter(model_dir, dtype=dtype)
    return load_onnx_segmenter(onnx_dir, quantized=dtype == "int8", threads=threads)


def window_inputs(segmenter, side: int):
    """One random `side` x `side` window (seed 0) and the default vocabulary's class embeddings."""
    import torch

    from cascade_clip_hf.onnx_runtime import OnnxCascadeClip

    pixel_values = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    model = segmenter.model
    class_embeds = model.class_embeddings
    if not isinstance(model, OnnxCascadeClip):
        pixel_values, class_embeds = pixel_values.to(model.dtype), class_embeds.to(model.dtype)
    return pixel_values, class_embeds


def forward_of(segmenter, pixel_values, class_embeds):
    """The image path alone: mask logits of the window, as a float32 numpy array."""
    from cascade_clip_hf.onnx_runtime import OnnxCascadeClip

    model = segmenter.model
    if isinstance(model, OnnxCascadeClip):
        embeds = class_embeds.numpy()
        return lambda: model.window_logits(pixel_values, embeds)
    return lambda: model(pixel_values=pixel_values, class_embeds=class_embeds).logits.float().numpy()


def backend_server(connection, params: dict) -> None:
    """
    Runs in a fresh process for one backend: loads it, then times one run of what the parent names at a time
    (`forward` or `window_path`), until the parent says `finish`: then it keeps the window's logits and the class map
    of a photo for the parent, and answers with its peak memory.
    """
    import torch
    from benchmark_user_paths import random_photo

    from cascade_clip_hf.visualization import segmentation_from_masks

    segmenter = load_backend(params["backend"], params["model_dir"], params["onnx_dir"], params["threads"])
    side = segmenter.model.config.vision_config.image_size
    pixel_values, class_embeds = window_inputs(segmenter, side)
    runs = {
        "forward": forward_of(segmenter, pixel_values, class_embeds),
        "window_path": lambda: segmenter.model.sliding_window_inference(pixel_values, output="segmentation"),
    }
    connection.send("ready")
    with torch.inference_mode():
        while (request := connection.recv()) != "finish":
            start = time.perf_counter()
            runs[request]()
            connection.send(time.perf_counter() - start)
        logits = runs["forward"]()
    width, height = PHOTO_SIZE if not params["tiny"] else (PHOTO_SIZE[0] // 8, PHOTO_SIZE[1] // 8)
    photo = random_photo(width, height, seed=5)
    class_map = segmentation_from_masks(segmenter(photo), segmenter.model.config.class_names, photo.size)
    scratch = Path(params["scratch"])
    np.save(scratch / f"{params['backend']}-logits.npy", logits)
    np.save(scratch / f"{params['backend']}-class-map.npy", class_map)
    connection.send(
        {
            "peak_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "window": side,
            "classes": int(class_embeds.shape[0]),
            "photo_size": [width, height],
        }
    )


def measure_backends(common: dict) -> dict:
    """
    The four backends, each in a process of its own, loaded one after the other and then timed in turns (one run
    of each backend a round, a warm-up round first), so that the shared machine's noise falls on all of them alike.
    """
    from benchmarking import load_average

    context = multiprocessing.get_context("spawn")
    servers = {}
    for backend in BACKENDS:
        logger.info(f"Loading {backend} ...")
        parent_end, child_end = context.Pipe()
        process = context.Process(target=backend_server, args=(child_end, {**common, "backend": backend}))
        process.start()
        if parent_end.recv() != "ready":
            raise RuntimeError(f"{backend} did not start")
        servers[backend] = (process, parent_end)
    results = {backend: {"load_average_start": load_average()} for backend in BACKENDS}
    for run in ("forward", "window_path"):
        logger.info(f"Timing {run} ...")
        times = {backend: [] for backend in BACKENDS}
        for _ in range(common["repeats"] + 1):
            for backend, (_, connection) in servers.items():
                time.sleep(SETTLE_S)
                connection.send(run)
                times[backend].append(connection.recv())
        for backend in BACKENDS:
            timed = times[backend][1:]  # the first round warms up
            results[backend].update({f"{run}_s": statistics.median(timed), f"{run}_times_s": timed})
    for backend, (process, connection) in servers.items():
        connection.send("finish")
        results[backend].update(connection.recv(), load_average_end=load_average(), threads=common["threads"])
        process.join()
    return results


def build_worker(params: dict) -> dict:
    """The benchmark's model (benchmark_user_paths.py's), saved; then its ONNX export with int8, timed."""
    from benchmark_user_paths import build_worker as build_model_folder

    from cascade_clip_hf.onnx_export import export_onnx

    built = build_model_folder({"tiny": params["tiny"], "model_dir": params["model_dir"]})
    start = time.perf_counter()
    manifest = export_onnx(params["model_dir"], params["onnx_dir"], quantize="int8")
    return {"parameters": built["parameters"], "export_s": time.perf_counter() - start, "checks": manifest["checks"]}


def demo_agreement_worker(params: dict) -> dict:
    """The demo model exported here; each backend's class maps against torch float32's, per scene set."""
    from benchmark_user_paths import HELD_OUT_SCENES, HELD_OUT_SCENES_TINY, HELD_OUT_SEED

    from cascade_clip_hf.onnx_export import export_onnx
    from cascade_clip_hf.segmenter import DEMO_MODEL
    from cascade_clip_hf.toy_world import UNSEEN_OBJECTS, scenes
    from cascade_clip_hf.visualization import segmentation_from_masks

    onnx_dir = Path(params["scratch"]) / "demo-onnx"
    export_onnx(str(DEMO_MODEL), onnx_dir, quantize="int8")
    segmenters = {backend: load_backend(backend, str(DEMO_MODEL), onnx_dir, params["threads"]) for backend in BACKENDS}
    class_names = segmenters[REFERENCE].model.config.class_names
    count = HELD_OUT_SCENES_TINY if params["tiny"] else HELD_OUT_SCENES
    scene_sets = {
        "bundled": [
            PIL.Image.open(path).convert("RGB") for path in sorted((REPOSITORY / "examples/scenes").glob("*.png"))
        ],
        "held_out": [
            PIL.Image.fromarray(image) for image, _, _ in scenes(HELD_OUT_SEED, count, objects=UNSEEN_OBJECTS)
        ],
    }
    results = {backend: {} for backend in BACKENDS[1:]}
    for set_name, images in scene_sets.items():
        maps = {
            backend: [segmentation_from_masks(segmenter(image), class_names, image.size) for image in images]
            for backend, segmenter in segmenters.items()
        }
        for backend in BACKENDS[1:]:
            equal = sum(int((a == b).sum()) for a, b in zip(maps[backend], maps[REFERENCE], strict=True))
            pixels = sum(reference.size for reference in maps[REFERENCE])
            identical = sum(bool((a == b).all()) for a, b in zip(maps[backend], maps[REFERENCE], strict=True))
            results[backend][set_name] = {
                "scenes": len(images),
                "agreement": equal / pixels,
                "identical_scenes": identical,
                "equal_pixels": equal,
                "pixels": pixels,
            }
    for sets in results.values():
        sets["overall"] = sum(sets[name]["equal_pixels"] for name in SCENE_SETS) / sum(
            sets[name]["pixels"] for name in SCENE_SETS
        )
    return {"backends": results, "held_out_seed": HELD_OUT_SEED, "held_out_objects": UNSEEN_OBJECTS}


def in_fresh_process(worker, params: dict) -> dict:
    """`worker(params)` in a new process (spawned: nothing inherited but the arguments); its failure as a dict."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        try:
            return pool.apply(worker, (params,))
        except Exception as error:  # a failed measurement is reported, the others still run
            logger.warning(f"{worker.__name__} failed: {error}")
            return {"failed": f"{type(error).__name__}: {error}"}


def compare_to_reference(results: dict, scratch: Path) -> None:
    """Adds each backend's logit difference and full-size class-map agreement with torch float32."""
    reference_logits = np.load(scratch / f"{REFERENCE}-logits.npy")
    reference_map = np.load(scratch / f"{REFERENCE}-class-map.npy")
    for backend, result in results.items():
        logits = np.load(scratch / f"{backend}-logits.npy")
        class_map = np.load(scratch / f"{backend}-class-map.npy")
        result["max_abs_logit_difference"] = float(np.abs(logits.astype(np.float64) - reference_logits).max())
        result["window_argmax_agreement"] = float((logits.argmax(1) == reference_logits.argmax(1)).mean())
        result["full_size_class_map_agreement"] = float((class_map == reference_map).mean())


def target_rows(report: dict) -> list[dict]:
    """
    The issue's targets with what was measured: pass (True) or fail (False), or None with the reason (`report_only`)
    where the run cannot judge one: a tiny model's (`--tiny`) figures say nothing of the full-size targets, and a CPU
    without int8 instructions is outside the speed target.
    """
    backends, demo = report["backends"], report["demo"].get("backends", {})
    rows = []

    def add(target: str, measured: str, passed, report_only: str | None = None):
        if report["tiny"]:
            passed, report_only = None, "tiny model; the targets are for the full size"
        rows.append({"target": target, "measured": measured, "pass": passed, "report_only": report_only})

    onnx, int8, reference = backends["onnx-float32"], backends["onnx-int8"], backends[REFERENCE]
    if "max_abs_logit_difference" in onnx:
        difference = onnx["max_abs_logit_difference"]
        add("ONNX float32 logits within 1e-4 of torch at full size", f"{difference:.2g}", difference <= 1e-4)
    if "onnx-float32" in demo:
        sets = demo["onnx-float32"]
        identical = all(sets[name]["identical_scenes"] == sets[name]["scenes"] for name in SCENE_SETS)
        add("ONNX float32 class maps identical on the demo scenes", f"{sets['overall']:.4%} of pixels", identical)
    if "forward_s" in int8 and "forward_s" in reference:
        speedup = reference["forward_s"] / int8["forward_s"]
        native = any(report["machine"]["cpu_flags"].get(flag) for flag in INT8_FLAGS)
        add(
            "int8 >= 1.8x faster than torch float32 (CPU with VNNI or AMX)",
            f"{speedup:.2f}x",
            speedup >= 1.8 if native else None,
            None if native else "no VNNI or AMX",
        )
    if "onnx-int8" in demo:
        agreement = demo["onnx-int8"]["overall"]
        add("int8 class maps agree with torch float32 on >= 98% of demo pixels", f"{agreement:.2%}", agreement >= 0.98)
    return rows


def shown(value, format_spec: str) -> str:
    return "n/a" if value is None else format(value, format_spec)


def markdown(report: dict) -> str:
    machine = report["machine"]
    flags = ", ".join(flag for flag, present in machine["cpu_flags"].items() if present) or "none of those"
    export = report["export"]
    lines = [
        f"Machine: {machine['cpu']} ({flags}), {machine['cores']} cores, {machine['memory_gib']} GiB of memory, "
        f"{report['settings']['threads']} threads for "
        f"torch and ONNX Runtime, torch {machine['torch']}, onnxruntime {report['versions']['onnxruntime']}, "
        f"{machine['date'][:10]}; load average {machine['load_average_start'][0]} at the start, "
        f"{machine['load_average_end'][0]} at the end (the machine is shared)."
        + (" Tiny model (--tiny): a smoke test, not a measurement." if report["tiny"] else ""),
        "",
        f"Model: {report['model']}. Export with int8: {shown(export.get('export_s'), '.0f')} s.",
        "",
        "| backend | forward, one window (s) | speed-up | window path (s) | peak memory (MiB) | max abs logit "
        "difference | full-size class map agreement | demo scenes agreement (bundled / held-out) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    reference = report["backends"][REFERENCE].get("forward_s")
    for backend, result in report["backends"].items():
        demo = report["demo"].get("backends", {}).get(backend)
        demo_cell = (
            f"{demo['bundled']['agreement']:.2%} / {demo['held_out']['agreement']:.2%}" if demo else "reference"
        )
        speedup = reference / result["forward_s"] if reference else None
        lines.append(
            f"| {backend} | {result['forward_s']:.3f} | {shown(speedup, '.2f')}x | {result['window_path_s']:.3f} | "
            f"{result['peak_memory_mib']:,.0f} | {result['max_abs_logit_difference']:.2g} | "
            f"{result['full_size_class_map_agreement']:.2%} | {demo_cell} |"
        )
    if report["targets"]:
        lines += ["", "| target | measured | result |", "| --- | --- | --- |"]
        for row in report["targets"]:
            verdict = {True: "pass", False: "FAIL", None: f"report only ({row['report_only']})"}[row["pass"]]
            lines.append(f"| {row['target']} | {row['measured']} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    import onnxruntime
    import torch
    from benchmark_user_paths import git
    from benchmarking import (
        check_report_paths,
        cpuinfo_field,
        load_average,
        machine_description,
        write_report,
        write_text,
    )

    from cascade_clip_hf.arguments import CommandLineParser

    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/onnx_cpu.json", help="the JSON report")
    parser.add_argument("--markdown", help="also write the Markdown tables here")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after a warm-up, whose median is taken")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of every backend")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and small images: a smoke test")
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    check_report_paths(parser, args.output, args.markdown)

    started = time.perf_counter()
    machine = machine_description("cpu")
    flags = set((cpuinfo_field("flags") or "").split())
    machine["cpu_flags"].update({flag: flag in flags for flag in INT8_FLAGS})
    machine["load_average_start"] = load_average()
    report = {
        "benchmark": "ONNX Runtime float32 and int8 beside torch float32 and bfloat16, CPU",
        "tiny": args.tiny,
        "model": "tiny (tests/helpers.py towers), COCO-Stuff vocabulary"
        if args.tiny
        else "ViT-B/16 at 512x512, COCO-Stuff preset (171 classes), random weights",
        "commit": git("rev-parse", "HEAD").strip(),
        "uncommitted_changes": bool(git("status", "--porcelain")),
        "machine": machine,
        "versions": {"onnxruntime": onnxruntime.__version__},
        "settings": {"repeats": args.repeats, "threads": args.threads},
    }
    with tempfile.TemporaryDirectory(prefix="cascade-clip-onnx-") as temp_name:
        scratch = Path(temp_name)
        common = {
            "model_dir": str(scratch / "model"),
            "onnx_dir": str(scratch / "onnx"),
            "scratch": temp_name,
            "threads": args.threads,
            "repeats": args.repeats,
            "tiny": args.tiny,
        }
        logger.info("Building and exporting the model ...")
        report["export"] = in_fresh_process(build_worker, common)
        if "failed" in report["export"]:
            raise SystemExit(f"error: building or exporting the model failed: {report['export']['failed']}")
        report["backends"] = measure_backends(common)
        compare_to_reference(report["backends"], scratch)
        logger.info("Demo model agreement ...")
        report["demo"] = in_fresh_process(demo_agreement_worker, common)
    machine["load_average_end"] = load_average()
    report["targets"] = target_rows(report)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write_report(args.output, report)
    table = markdown(report)
    write_text(args.markdown, table + "\n")
    print(table)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
