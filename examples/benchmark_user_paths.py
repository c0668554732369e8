"""The paths users run, timed at full size: the code of a baseline revision beside the code of this tree, in one run.

Full-size Cascade-CLIP (ViT-B/16 at 512, the COCO-Stuff preset: 171 classes, 15 templates, 50 prompt tokens) with
random weights, saved once by this tree's code and loaded by both. Every measurement runs in a fresh process of this
script (`--worker`) whose PYTHONPATH is the tree it measures: the baseline revision unpacked by `git archive` into a
temporary folder (removed afterwards) or this checkout. Baseline and current runs of one measurement follow each
other, so that they share the machine's noise.

    a  stored vocabulary: pipeline on one 512x512 image (warm-up, then the median of --repeats calls)
    b  171 own names (`candidate_labels`), first call in a fresh process (embedding included)
    c  the same names, second and third calls of that process
    d  first embedding of 171 names x 15 templates alone (processor text + get_class_embeddings); in this tree also
       the embedding against the floor of the text tower's own matmuls, timed interleaved
    e  `cascade-clip segment` over a folder of 8 photos of 1280x960 with --labels of the 171 names, against 8 times
       the single-image pipeline time measured in the same worker
    f  peak resident memory of one stored-vocabulary call on photos of 1, 4, 12 and 24 megapixels (4:3)
    g  this tree only: the forward on one window against the floor (its own matmul shapes, timed interleaved), fp32
       and bf16
    h  this tree only: bf16 class maps against fp32 on the shipped demo model, bundled and held-out toy scenes

    PYTHONPATH=. python examples/benchmark_user_paths.py --output benchmarks/user_paths_cpu.json \\
        --markdown benchmarks/user_paths_cpu.md
    PYTHONPATH=. python examples/benchmark_user_paths.py --tiny --output /tmp/user_paths_tiny.json  # a smoke test
"""

import argparse
import hashlib
import io
import json
import logging
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image


logger = logging.getLogger("benchmark_user_paths")
REPOSITORY = Path(__file__).resolve().parent.parent
BASELINE_REF = "09d8909"  # the code before issue 14
MEASUREMENTS = "abcdefgh"
CURRENT_ONLY = "gh"
TARGET_MEGAPIXELS = 12
FOLDER_PHOTOS = 8
# Toy-world scenes the demo model never saw: examples/build_demo_model.py draws its scenes with seeds 0 to 4.
HELD_OUT_SEED = 2024
HELD_OUT_SCENES = 64
HELD_OUT_SCENES_TINY = 8
# --tiny: a tiny model (tests/helpers.py's towers) on images and photos this much smaller in each side.
TINY_SHRINK = 8


def scaled(size: int, tiny: bool) -> int:
    return max(size // TINY_SHRINK, 16) if tiny else size


def photo_size(megapixels: float) -> tuple[int, int]:
    """`(width, height)` of a 4:3 photo of about `megapixels` million pixels."""
    unit = round(math.sqrt(megapixels * 1e6 / 12))
    return 4 * unit, 3 * unit


def random_photo(width: int, height: int, seed: int) -> PIL.Image.Image:
    """Smooth random colour blobs with fine detail on top, the same for the same seed; built from uint8 images only,
    so that making a 24-megapixel photo does not raise a process's peak memory above the model's."""
    rng = np.random.default_rng(seed)
    blobs = PIL.Image.fromarray(rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8))
    detail = PIL.Image.fromarray(rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8))
    size = (width, height)
    return PIL.Image.blend(blobs.resize(size, PIL.Image.BICUBIC), detail.resize(size, PIL.Image.BILINEAR), 0.25)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------------------------------------------------------
# Workers: each runs in a fresh process with the measured tree first on PYTHONPATH, and uses only what both trees
# have (from_pretrained, the pipeline class, the `segment` command), detecting optional extras.
# ---------------------------------------------------------------------------------------------------------------


def load_pipeline(model_dir: str, dtype=None):
    """The zero-shot pipeline on a saved model, its weights cast to `dtype` (a torch dtype) when given."""
    import torch

    from cascade_clip_hf import (
        CascadeClipForZeroShotSegmentation,
        CascadeClipProcessor,
        CascadeClipZeroShotSegmentationPipeline,
    )

    model = CascadeClipForZeroShotSegmentation.from_pretrained(model_dir).eval()
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    processor = CascadeClipProcessor.from_pretrained(model_dir)
    return CascadeClipZeroShotSegmentationPipeline(model=model, processor=processor)


def class_names_of(params: dict) -> list[str]:
    return Path(params["labels"]).read_text(encoding="utf-8").splitlines()


def class_map(segments: list[dict], class_names: list[str], size: tuple[int, int]) -> np.ndarray:
    """The `(height, width)` class indices a pipeline result describes (its masks are disjoint)."""
    width, height = size
    indices = np.zeros((height, width), dtype=np.int16)
    for segment in segments:
        indices[np.asarray(segment["mask"]) > 0] = class_names.index(segment["label"])
    return indices


def build_worker(params: dict) -> dict:
    """Builds the benchmark's model with fixed seeds and saves it with its processor (this tree's code)."""
    import torch
    from transformers import CLIPTokenizer

    from cascade_clip_hf import (
        CascadeClipConfig,
        CascadeClipForZeroShotSegmentation,
        CascadeClipImageProcessor,
        CascadeClipProcessor,
    )
    from tests.helpers import (
        CLIP_TOKENIZER,
        TINY_CASCADE_KWARGS,
        TINY_IMAGE_SIZE,
        TINY_TEXT_CONFIG,
        TINY_VISION_CONFIG,
    )

    if params["tiny"]:
        torch.manual_seed(0)
        config = CascadeClipConfig.from_preset(
            "coco-stuff-164k",
            "inductive",
            vision_config={**TINY_VISION_CONFIG, "image_size": TINY_IMAGE_SIZE},
            text_config=dict(TINY_TEXT_CONFIG),
            slide_crop_size=TINY_IMAGE_SIZE,
            slide_stride=TINY_IMAGE_SIZE * 426 // 512,
            **TINY_CASCADE_KWARGS,
        )
        model = CascadeClipForZeroShotSegmentation(config)
        model.class_embeddings = torch.nn.functional.normalize(torch.randn_like(model.class_embeddings), dim=-1)
        size = {"shortest_edge": TINY_IMAGE_SIZE, "longest_edge": TINY_IMAGE_SIZE * 4}
    else:
        from benchmark_inference import build_model

        model = build_model(torch.float32, "sdpa", "cpu")
        config = model.config
        size = {"shortest_edge": 512, "longest_edge": 2048}
    processor = CascadeClipProcessor(
        CascadeClipImageProcessor(size=size, mask_size=config.vision_config.image_size),
        CLIPTokenizer.from_pretrained(CLIP_TOKENIZER),
        templates=config.templates,
        seen_classes=config.seen_class_names,
    )
    model.eval().save_pretrained(params["model_dir"])
    processor.save_pretrained(params["model_dir"])
    return {
        "class_names": config.class_names,
        "templates": len(config.templates),
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
    }


def load_worker(params: dict) -> dict:
    """Loads the saved model and processor, to check that this tree can."""
    segmenter = load_pipeline(params["model_dir"])
    return {"classes": len(segmenter.model.config.class_names)}


def stored_worker(params: dict) -> dict:
    """a: the stored vocabulary, one square image, warm-up then the median of `repeats` calls."""
    from benchmarking import time_runs

    segmenter = load_pipeline(params["model_dir"])
    side = scaled(512, params["tiny"])
    image = random_photo(side, side, seed=1)
    timing = time_runs(lambda: segmenter(image), params["repeats"], "cpu")
    return {"seconds": timing["median_s"], "min_s": timing["min_s"], "repeats": params["repeats"], "size": side}


def own_names_worker(params: dict) -> dict:
    """b, c: three calls with the 171 names as `candidate_labels` in one fresh process."""
    segmenter = load_pipeline(params["model_dir"])
    class_names = class_names_of(params)
    side = scaled(512, params["tiny"])
    image = random_photo(side, side, seed=1)
    durations = []
    for _ in range(3):
        start = time.perf_counter()
        segmenter(image, candidate_labels=class_names)
        durations.append(time.perf_counter() - start)
    return {"first_s": durations[0], "repeated_s": statistics.mean(durations[1:]), "calls_s": durations}


def embedding_worker(params: dict) -> dict:
    """d: the first embedding of the names over the templates in a fresh process, tokenizing included."""
    import torch

    from cascade_clip_hf import CascadeClipForZeroShotSegmentation, CascadeClipProcessor

    model = CascadeClipForZeroShotSegmentation.from_pretrained(params["model_dir"]).eval()
    processor = CascadeClipProcessor.from_pretrained(params["model_dir"])
    class_names = class_names_of(params)
    start = time.perf_counter()
    text = processor(text=class_names)
    tokenized = time.perf_counter()
    with torch.no_grad():
        embeddings = model.get_class_embeddings(text["input_ids"], text["attention_mask"], class_names=class_names)
    end = time.perf_counter()
    result = {
        "seconds": end - start,
        "tokenize_s": tokenized - start,
        "embed_s": end - tokenized,
        "prompts": int(text["input_ids"].shape[0] * text["input_ids"].shape[1]),
        "embeddings_shape": list(embeddings.shape),
    }
    if hasattr(model, "clear_text_tower_cache"):  # this tree: its embedding against the floor of its own matmuls

        def embed():
            model.clear_text_tower_cache()
            model.get_class_embeddings(text["input_ids"], text["attention_mask"])

        with torch.no_grad(), matmul_recorder() as recorder:
            embed()
        floor, gflop = floor_of(recorder.calls, share_equal_layouts=True)
        durations = {"embed": [], "floor": []}
        with torch.no_grad():
            for _ in range(2):
                for name, run in (("embed", embed), ("floor", floor)):
                    started = time.perf_counter()
                    run()
                    durations[name].append(time.perf_counter() - started)
        result["text_tower_floor_s"] = min(durations["floor"])
        result["embed_over_floor"] = min(durations["embed"]) / min(durations["floor"])
        result["text_tower_gflop"] = round(gflop, 1)
        result.update({f"{name}_times_s": times for name, times in durations.items()})
    return result


def cli_command(params: dict, output: Path) -> tuple[list[str], bool]:
    """The `cascade-clip segment` command over the photo folder, with --threads where this tree's command has it."""
    import torch

    command = [sys.executable, "-m", "cascade_clip_hf.cli", "segment", params["photos"]]
    command += ["--model", params["model_dir"], "--labels", params["labels"], "--output", str(output)]
    command += ["--batch-size", "1"]
    usage = subprocess.run(command[:4] + ["--help"], capture_output=True, text=True, check=True).stdout
    has_threads = "--threads" in usage
    if has_threads:
        command += ["--threads", str(torch.get_num_threads())]
    return command, has_threads


def folder_worker(params: dict) -> dict:
    """e: the command over the folder, wall time with loading and writes; then the pipeline's time on one photo."""
    from benchmarking import time_runs

    output = Path(params["scratch"]) / "segmented"
    command, has_threads = cli_command(params, output)
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    total = time.perf_counter() - start
    if finished.returncode != 0:
        raise RuntimeError(f"cascade-clip segment exited with {finished.returncode}: {finished.stderr[-500:]}")
    photos = sorted(Path(params["photos"]).iterdir())
    written = len(list(output.glob("*_classes.png")))
    if written != len(photos):
        raise RuntimeError(f"cascade-clip segment wrote {written} class maps for {len(photos)} photos")
    vocabulary_run = vocabulary_folder_run(params, command) if has_vocabulary_files(command) else {}
    segmenter = load_pipeline(params["model_dir"])
    photo = PIL.Image.open(photos[0]).convert("RGB")
    timing = time_runs(lambda: segmenter(photo), params["repeats"], "cpu")
    model_total = len(photos) * timing["median_s"]
    if vocabulary_run:
        vocabulary_run["vocabulary_ratio"] = vocabulary_run["vocabulary_total_s"] / model_total
    return {
        "total_s": total,
        "per_image_s": total / len(photos),
        "model_s": timing["median_s"],
        "model_total_s": model_total,
        "ratio": total / model_total,
        "photos": len(photos),
        "photo_size": list(photo.size),
        "threads_flag": has_threads,
        **vocabulary_run,
    }


def has_vocabulary_files(command: list[str]) -> bool:
    """Whether this tree's command line embeds vocabularies into files (`cascade-clip embed`)."""
    usage = subprocess.run(command[:3] + ["--help"], capture_output=True, text=True, check=True).stdout
    return "embed" in usage


def vocabulary_folder_run(params: dict, labels_command: list[str]) -> dict:
    """The same folder with the names embedded beforehand: `cascade-clip embed`, then `segment --vocabulary`."""
    scratch = Path(params["scratch"])
    vocabulary = scratch / "vocabulary.safetensors"
    embed = [*labels_command[:3], "embed", "--model", params["model_dir"], "--labels", params["labels"]]
    start = time.perf_counter()
    subprocess.run([*embed, "--output", str(vocabulary)], capture_output=True, text=True, check=True)
    embed_s = time.perf_counter() - start
    output = scratch / "segmented-vocabulary"
    labels_at = labels_command.index("--labels")
    command = [*labels_command[:labels_at], "--vocabulary", str(vocabulary), *labels_command[labels_at + 2 :]]
    command[command.index("--output") + 1] = str(output)
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=True)
    return {"embed_s": embed_s, "vocabulary_total_s": time.perf_counter() - start}


def peak_memory_worker(params: dict) -> dict:
    """f: one stored-vocabulary call on a photo of `megapixels`; the process's peak resident memory."""
    segmenter = load_pipeline(params["model_dir"])
    width, height = photo_size(params["megapixels"])
    photo = random_photo(width, height, seed=3)
    before = peak_rss_mib()
    start = time.perf_counter()
    segments = segmenter(photo)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    indices = class_map(segments, segmenter.model.config.class_names, photo.size)
    return {
        "peak_mib": peak,
        "peak_before_call_mib": before,
        "seconds": seconds,
        "megapixels": params["megapixels"],
        "size": [width, height],
        "classes_in_map": len(segments),
        "class_map_sha1": hashlib.sha1(indices.tobytes()).hexdigest(),
    }


def matmul_recorder():
    """A dispatch mode that records the forward's matmuls as replayable calls: `mm`-family ops as they are, each
    fused attention as its two batched matmuls (`Q K^T`, `A V`), each convolution as its im2col matmul."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    # linear and matmul reach the mode only where composite ops are not decomposed first (under inference_mode).
    matmuls = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten._addmm_activation, aten.mv, aten.addmv}
    matmuls |= {aten.linear, aten.matmul}

    def layout(tensor):
        return {"shape": tuple(tensor.shape), "stride": tuple(tensor.stride()), "dtype": tensor.dtype}

    def contiguous(shape, dtype):
        strides, step = [], 1
        for length in reversed(shape):
            strides.insert(0, step)
            step *= length
        return {"shape": tuple(shape), "stride": tuple(strides), "dtype": dtype}

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def record_matmul(self, rows: int, depth: int, columns: int, dtype, batch: int = 1):
            """A `(rows, depth) @ (depth, columns)` product, as `batch` equal batched products when `batch` > 1."""
            if batch == 1:
                self.calls.append(
                    (aten.mm.default, [contiguous((rows, depth), dtype), contiguous((depth, columns), dtype)], {})
                )
            else:
                left, right = (batch, rows // batch, depth), (batch, depth, columns)
                self.calls.append((aten.bmm.default, [contiguous(left, dtype), contiguous(right, dtype)], {}))

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            packet = func.overloadpacket
            if packet in matmuls:
                spec = [layout(arg) if isinstance(arg, torch.Tensor) else arg for arg in args]
                self.calls.append((func, spec, dict(kwargs)))
            elif "scaled_dot_product" in packet.__name__:
                query, key, value = args[:3]
                pairs, length, source = math.prod(query.shape[:-2]), query.shape[-2], key.shape[-2]
                self.record_matmul(pairs * length, query.shape[-1], source, query.dtype, pairs)
                self.record_matmul(pairs * length, source, value.shape[-1], query.dtype, pairs)
            elif packet in (aten.convolution, aten.conv2d):
                output = func(*args, **kwargs)
                weight = args[1]
                self.record_matmul(
                    output.shape[0] * math.prod(output.shape[2:]), weight[0].numel(), weight.shape[0], weight.dtype
                )
                return output
            return func(*args, **kwargs)

    return Recorder()


def floor_of(calls: list, share_equal_layouts: bool = False) -> tuple:
    """
    The recorded matmuls on fresh random tensors of the same shapes, strides and dtypes, and their GFLOP. With
    `share_equal_layouts`, calls share one tensor per layout (for many batches of the same layers, which would not
    fit in memory each with its own).
    """
    import torch

    shared = {}

    def random_tensor(spec):
        key = (spec["shape"], spec["stride"], spec["dtype"])
        if share_equal_layouts and key in shared:
            return shared[key]
        if 0 in spec["stride"]:
            tensor = torch.randn(spec["shape"], dtype=spec["dtype"])
        else:
            tensor = torch.empty_strided(spec["shape"], spec["stride"], dtype=spec["dtype"]).normal_()
        if share_equal_layouts:
            shared[key] = tensor
        return tensor

    replays, flop = [], 0
    for func, spec, kwargs in calls:
        args = [random_tensor(arg) if isinstance(arg, dict) else arg for arg in spec]
        tensors = [arg for arg in args if isinstance(arg, torch.Tensor)]
        if func.overloadpacket is torch.ops.aten.linear:
            flop += 2 * tensors[0].numel() * tensors[1].shape[0]
        else:
            left, right = tensors[-2:]
            flop += 2 * left.numel() * (right.shape[-1] if right.dim() > 1 else 1)
        replays.append((func, args, kwargs))

    def floor():
        for func, args, kwargs in replays:
            func(*args, **kwargs)

    return floor, flop / 1e9


def forward_floor_worker(params: dict) -> dict:
    """
    g: the model's forward on one window, and the whole sliding-window path on it (forward, upsampling, calibrated
    scores over every class at the window's size), each against the floor of the forward's own matmuls, timed
    interleaved, in fp32 and bf16.
    """
    import torch

    from cascade_clip_hf import CascadeClipForZeroShotSegmentation

    model = CascadeClipForZeroShotSegmentation.from_pretrained(params["model_dir"]).eval()
    side = model.config.vision_config.image_size
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, side, side)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        inputs = pixel_values.to(dtype)

        def forward():
            model(pixel_values=inputs)

        def window_path():
            model.sliding_window_inference(inputs)

        # Recorded under no_grad, not inference_mode: there, composite ops (linear, matmul, attention) reach the
        # dispatch mode whole instead of as the matmuls they run.
        with torch.no_grad(), matmul_recorder() as recorder:
            forward()
        floor, gflop = floor_of(recorder.calls)
        runs = {"forward": forward, "window_path": window_path, "floor": floor}
        durations = {name: [] for name in runs}
        with torch.inference_mode():
            for run in runs.values():
                run()
            for _ in range(params["repeats"]):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    durations[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(times) for name, times in durations.items()}
        results[str(dtype).removeprefix("torch.")] = {
            "forward_s": medians["forward"],
            "window_path_s": medians["window_path"],
            "floor_s": medians["floor"],
            "ratio": medians["forward"] / medians["floor"],
            "window_path_ratio": medians["window_path"] / medians["floor"],
            "matmuls": len(recorder.calls),
            "matmul_gflop": round(gflop, 2),
            "floor_gflop_per_s": round(gflop / medians["floor"], 1),
            **{f"{name}_times_s": times for name, times in durations.items()},
        }
        del floor, runs  # their tensors, before the next dtype's
    results["bf16_speedup"] = results["float32"]["forward_s"] / results["bfloat16"]["forward_s"]
    results["bf16_window_path_speedup"] = results["float32"]["window_path_s"] / results["bfloat16"]["window_path_s"]
    results["window"] = side
    return results


def agreement_worker(params: dict) -> dict:
    """h: the share of pixels where the bf16 demo model picks the fp32 model's class, per scene set and overall."""
    import torch

    from cascade_clip_hf.segmenter import DEMO_MODEL
    from cascade_clip_hf.toy_world import UNSEEN_OBJECTS, scenes

    fp32 = load_pipeline(str(DEMO_MODEL))
    bf16 = load_pipeline(str(DEMO_MODEL), torch.bfloat16)
    class_names = fp32.model.config.class_names
    scene_count = HELD_OUT_SCENES_TINY if params["tiny"] else HELD_OUT_SCENES
    bundled = [PIL.Image.open(path).convert("RGB") for path in sorted((REPOSITORY / "examples/scenes").glob("*.png"))]
    held_out = [
        PIL.Image.fromarray(image) for image, _, _ in scenes(HELD_OUT_SEED, scene_count, objects=UNSEEN_OBJECTS)
    ]
    sets = {}
    for name, images in (("bundled", bundled), ("held_out", held_out)):
        equal = total = 0
        for image in images:
            reference = class_map(fp32(image), class_names, image.size)
            candidate = class_map(bf16(image), class_names, image.size)
            equal += int((reference == candidate).sum())
            total += reference.size
        sets[name] = {"scenes": len(images), "pixels": total, "equal_pixels": equal, "agreement": equal / total}
    equal = sum(group["equal_pixels"] for group in sets.values())
    pixels = sum(group["pixels"] for group in sets.values())
    return {**sets, "overall": equal / pixels, "held_out_seed": HELD_OUT_SEED, "held_out_objects": UNSEEN_OBJECTS}


WORKERS = {
    "build": build_worker,
    "load": load_worker,
    "stored": stored_worker,
    "own_names": own_names_worker,
    "embedding": embedding_worker,
    "folder": folder_worker,
    "peak_memory": peak_memory_worker,
    "forward_floor": forward_floor_worker,
    "agreement": agreement_worker,
}


def worker_main(name: str, params: dict) -> None:
    """Runs one measurement and writes its result, with the threads and load around it, as JSON."""
    import torch
    from benchmarking import load_average

    import cascade_clip_hf

    package = Path(cascade_clip_hf.__file__).resolve().parent
    if package.parent != Path(params["tree"]).resolve():
        raise RuntimeError(f"cascade_clip_hf came from {package}, not from the measured tree {params['tree']}")
    if params["threads"]:
        torch.set_num_threads(params["threads"])
    load_start = load_average()
    started = time.perf_counter()
    result = WORKERS[name](params)
    result.update(
        worker_s=round(time.perf_counter() - started, 2),
        torch_threads=torch.get_num_threads(),
        load_average_start=load_start,
        load_average_end=load_average(),
    )
    Path(params["result"]).write_text(json.dumps(result, default=str), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# The parent: trees, fresh processes under a memory cap, the report.
# ---------------------------------------------------------------------------------------------------------------


def process_tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (0 for one that has gone)."""
    total, pending = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while pending:
        current = pending.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text(encoding="ascii").split()[1]) * page
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text(encoding="ascii").split()]
        except (OSError, ValueError):
            continue
    return total


class Runner:
    """Starts workers in fresh processes with the right tree on PYTHONPATH; watches their memory and time."""

    def __init__(self, args: argparse.Namespace, temp: Path, trees: dict[str, Path], common: dict):
        self.args, self.temp, self.trees, self.common = args, temp, trees, common
        self.count = 0

    def run(self, tree: str, worker: str, **params) -> dict:
        self.count += 1
        scratch = self.temp / f"{self.count:02d}-{worker}-{tree}"
        scratch.mkdir()
        result_file = scratch / "result.json"
        params = {
            **self.common,
            **params,
            "tree": str(self.trees[tree]),
            "scratch": str(scratch),
            "result": str(result_file),
        }
        env = {
            **os.environ,
            "PYTHONPATH": str(self.trees[tree]),
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            # A fresh home for every cache, so that no process finds what an earlier one stored.
            "HF_HOME": str(scratch / "hf-home"),
            "XDG_CACHE_HOME": str(scratch / "cache"),
        }
        if self.args.threads:
            env["OMP_NUM_THREADS"] = str(self.args.threads)
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--params", json.dumps(params)]
        logger.info(f"{worker} ({tree}) ...")
        log_file = scratch / "log.txt"
        with open(log_file, "w", encoding="utf-8") as log:
            process = subprocess.Popen(
                command, env=env, cwd=self.trees[tree], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            stopped, peak = self.watch(process)
        if process.returncode == 0 and result_file.exists():
            result = json.loads(result_file.read_text(encoding="utf-8"))
            result["watched_peak_mib"] = round(peak / 2**20, 1)
            logger.info(f"{worker} ({tree}) done in {result['worker_s']} s")
            return result
        log_tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-6:]
        if stopped is None and process.returncode < 0:
            stopped = f"killed by signal {-process.returncode} (the system may have run out of memory)"
        reason = stopped or (log_tail[-1][:160] if log_tail else f"exited with {process.returncode}")
        logger.warning(f"{worker} ({tree}) failed: {reason}")
        return {"failed": reason, "log_tail": log_tail, "watched_peak_mib": round(peak / 2**20, 1)}

    def watch(self, process: subprocess.Popen) -> tuple[str | None, int]:
        """Waits for `process`, stopping it (and its children) past the memory cap or the timeout."""
        cap, started, peak = self.args.memory_cap_gib * 2**30, time.monotonic(), 0
        while process.poll() is None:
            rss = process_tree_rss(process.pid)
            peak = max(peak, rss)
            stopped = None
            if rss > cap:
                stopped = f"resident memory over the {self.args.memory_cap_gib:g} GiB cap (--memory-cap-gib)"
            elif time.monotonic() - started > self.args.timeout:
                stopped = f"still running after {self.args.timeout} s (--timeout)"
            if stopped:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # it ended by itself meanwhile
                process.wait()
                return stopped, peak
            time.sleep(0.05)
        return None, peak


def git(*arguments: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPOSITORY), *arguments], capture_output=True, text=True, check=True
    ).stdout


def unpack_revision(ref: str, folder: Path) -> str:
    """Writes the files of revision `ref` into `folder` (without touching the repository); returns its commit."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", "--format=tar", commit], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return commit


def run_measurements(args, runner: Runner, selected: str, trees: list[str], save) -> dict:
    """Runs the selected measurements, baseline and current of each one after the other; `save` after each."""
    results = {}

    def pair(worker: str, **params) -> dict:
        return {tree: runner.run(tree, worker, **params) for tree in trees}

    for key in selected:
        if key == "a":
            results["a"] = pair("stored")
        elif key in "bc" and "bc" not in results:
            results["bc"] = pair("own_names")
        elif key == "d":
            results["d"] = pair("embedding")
        elif key == "e":
            results["e"] = pair("folder")
        elif key == "f":
            results["f"] = {
                f"{megapixels:g}": pair("peak_memory", megapixels=megapixels) for megapixels in args.megapixels
            }
        elif key == "g":
            results["g"] = {"current": runner.run("current", "forward_floor")}
        elif key == "h":
            results["h"] = {"current": runner.run("current", "agreement")}
        save(results)
    return results


def value_of(result: dict | None, *path: str):
    """A number from a worker's result, its failure as text, or None where it was not measured."""
    if result is None:
        return None
    if "failed" in result:
        return f"failed: {result['failed']}"
    for step in path:
        if not isinstance(result, dict) or step not in result:
            return None
        result = result[step]
    return result


def ratio(baseline, current):
    if isinstance(baseline, (int, float)) and isinstance(current, (int, float)) and baseline:
        return current / baseline
    return None


def figure_rows(results: dict, megapixels: list[float]) -> list[dict]:
    """The report's figures: name, unit, baseline, current and current/baseline."""
    sources = [
        ("a", "stored vocabulary, per image", "s", ("seconds",)),
        ("bc", "171 own names, first call", "s", ("first_s",)),
        ("bc", "171 own names, repeated", "s", ("repeated_s",)),
        ("d", "first embedding, 171 names x 15 templates", "s", ("seconds",)),
        ("d", "the text tower's matmul floor for that embedding", "s", ("text_tower_floor_s",)),
        ("d", "embedding / its matmul floor", "x", ("embed_over_floor",)),
        ("e", "CLI folder of 8 photos, total", "s", ("total_s",)),
        ("e", "CLI folder, per image", "s", ("per_image_s",)),
        ("e", "8 x single-image model time", "s", ("model_total_s",)),
        ("e", "CLI folder / (8 x model time)", "x", ("ratio",)),
        ("e", "`cascade-clip embed` of the 171 names, once", "s", ("embed_s",)),
        ("e", "CLI folder with --vocabulary, total", "s", ("vocabulary_total_s",)),
        ("e", "CLI folder with --vocabulary / (8 x model time)", "x", ("vocabulary_ratio",)),
    ]
    sources += [("f", f"peak memory, {size:.3g} MP photo", "MiB", (f"{size:g}", "peak_mib")) for size in megapixels]
    sources += [
        ("g", "fp32 forward, one 512x512 window", "s", ("float32", "forward_s")),
        ("g", "fp32 matmul floor", "s", ("float32", "floor_s")),
        ("g", "fp32 forward / floor", "x", ("float32", "ratio")),
        ("g", "fp32 sliding-window path, one window", "s", ("float32", "window_path_s")),
        ("g", "fp32 sliding-window path / floor", "x", ("float32", "window_path_ratio")),
        ("g", "bf16 forward, one 512x512 window", "s", ("bfloat16", "forward_s")),
        ("g", "bf16 matmul floor", "s", ("bfloat16", "floor_s")),
        ("g", "bf16 forward / floor", "x", ("bfloat16", "ratio")),
        ("g", "bf16 sliding-window path, one window", "s", ("bfloat16", "window_path_s")),
        ("g", "bf16 forward speed-up over fp32", "x", ("bf16_speedup",)),
        ("g", "bf16 sliding-window path speed-up over fp32", "x", ("bf16_window_path_speedup",)),
        ("h", "bf16 class-map agreement, bundled scenes", "%", ("bundled", "agreement")),
        ("h", "bf16 class-map agreement, held-out scenes", "%", ("held_out", "agreement")),
        ("h", "bf16 class-map agreement, overall", "%", ("overall",)),
    ]
    rows = []
    for key, name, unit, path in sources:
        if key not in results:
            continue
        measured = results[key]
        if key == "f":
            measured, path = measured.get(path[0], {}), path[1:]
        baseline = None if key in CURRENT_ONLY else value_of(measured.get("baseline"), *path)
        current = value_of(measured.get("current"), *path)
        rows.append(
            {"figure": name, "unit": unit, "baseline": baseline, "current": current, "ratio": ratio(baseline, current)}
        )
    return rows


def target_rows(results: dict, machine: dict, scale: float) -> list[dict]:
    """The issue's targets, each with the measured value and pass (True), fail (False) or None (report only)."""

    def current(key, *path):
        return value_of(results.get(key, {}).get("current"), *path)

    def baseline(key, *path):
        return value_of(results.get(key, {}).get("baseline"), *path)

    def number(*values) -> bool:
        return all(isinstance(value, (int, float)) for value in values)

    rows = []

    def add(target: str, value: str, passed):
        rows.append({"target": target, "measured": value, "pass": passed})

    stored, repeated = current("a", "seconds"), current("bc", "repeated_s")
    if number(stored, repeated):
        add("repeated own names <= 1.2x stored vocabulary", f"{repeated / stored:.2f}x", repeated / stored <= 1.2)
    size = f"{TARGET_MEGAPIXELS * scale:g}"
    photo = results.get("f", {}).get(size, {})
    photo_now, photo_then = photo.get("current"), photo.get("baseline")
    photo_target = f"{size} MP photo, 171 classes: peak < 3 GiB, class map identical"
    if photo_now and "failed" in photo_now:
        add(photo_target, f"failed: {photo_now['failed']}", False)
    elif photo_now:
        same = None
        if photo_then and "failed" not in photo_then:
            same = photo_now["class_map_sha1"] == photo_then["class_map_sha1"]
        identical = {True: "identical", False: "DIFFERENT", None: "no baseline map"}[same]
        add(
            photo_target,
            f"{photo_now['peak_mib']:,.0f} MiB, {identical}",
            photo_now["peak_mib"] < 3 * 1024 and same is not False,
        )
    embedding, first_then, stored_then = current("d", "seconds"), baseline("bc", "first_s"), baseline("a", "seconds")
    if number(embedding, first_then, stored_then):
        budget = first_then - stored_then
        add(
            "first embedding faster than the baseline's first own-names call minus its image time",
            f"{embedding:.2f} s vs {budget:.2f} s",
            embedding < budget,
        )
    for key, run in (("ratio", "--labels (first embedding included)"), ("vocabulary_ratio", "--vocabulary")):
        folder = current("e", key)
        if number(folder):
            add(f"CLI folder, {run}, within 1.25x of 8 x model time", f"{folder:.2f}x", folder <= 1.25)
    text_floor, model_total = current("d", "text_tower_floor_s"), current("e", "model_total_s")
    if number(text_floor, model_total):
        add(
            "(report) least --labels folder ratio fp32 allows: (8 x model time + text tower floor) / 8 x model time",
            f"{(model_total + text_floor) / model_total:.2f}x",
            None,
        )
    forward = current("g", "float32", "ratio")
    if number(forward):
        add("fp32 forward <= 1.25x its matmul floor", f"{forward:.2f}x", forward <= 1.25)
    speedup = current("g", "bf16_speedup")
    if number(speedup):
        flags = machine["cpu_flags"]
        native = flags.get("avx512_bf16") or flags.get("amx_bf16")
        add(
            "bf16 >= 2x faster than fp32 (CPUs with AVX512-BF16 or AMX)",
            f"{speedup:.2f}x",
            speedup >= 2 if native else None,
        )
    agreement = current("h", "overall")
    if number(agreement):
        add("bf16 class maps agree with fp32 on >= 99% of pixels (demo model)", f"{agreement:.2%}", agreement >= 0.99)
    return rows


def shown_value(value, unit: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return {"s": f"{value:.3g}", "MiB": f"{value:,.0f}", "x": f"{value:.2f}x", "%": f"{value:.2%}"}[unit]


def markdown(report: dict) -> str:
    machine = report["machine"]
    flags = ", ".join(flag for flag, present in machine["cpu_flags"].items() if present) or "none of those"
    lines = [
        f"Machine: {machine['cpu']} ({flags}), {machine['cores']} cores, {report['settings']['torch_threads']} torch "
        f"threads, torch {machine['torch']}, transformers {machine['transformers']}, {machine['date'][:10]}; load "
        f"average {machine['load_average_start'][0]} at the start, {machine['load_average_end'][0]} at the end."
        + (" Tiny model (--tiny): a smoke test, not a measurement." if report["tiny"] else ""),
        "",
        f"| figure | baseline ({report['baseline']['ref']}) | current | current / baseline |",
        "| --- | --- | --- | --- |",
    ]
    for row in report["figures"]:
        baseline, current = shown_value(row["baseline"], row["unit"]), shown_value(row["current"], row["unit"])
        unit = "" if row["unit"] in ("x", "%") else f" ({row['unit']})"
        lines.append(f"| {row['figure']}{unit} | {baseline} | {current} | {shown_value(row['ratio'], 'x')} |")
    if report["targets"]:
        lines += ["", "| target | measured | result |", "| --- | --- | --- |"]
        for row in report["targets"]:
            verdict = {True: "pass", False: "FAIL", None: "report only (no native bf16)"}[row["pass"]]
            lines.append(f"| {row['target']} | {row['measured']} | {verdict} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/user_paths_cpu.json", help="the JSON report")
    parser.add_argument("--markdown", help="also write the Markdown tables here")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git revision of the code to compare with")
    parser.add_argument("--only", default=MEASUREMENTS, help="measurements to run, e.g. a,b,c (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up, where a median is taken")
    parser.add_argument("--threads", type=int, help="torch threads in every process (default: torch's)")
    parser.add_argument("--megapixels", type=float, nargs="+", help="photo sizes of f (default: 1 4 12 24)")
    parser.add_argument("--memory-cap-gib", type=float, default=20, help="a process past this resident memory fails")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds after which one process fails")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and small images: a smoke test")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    selected = "".join(dict.fromkeys(args.only.replace(",", "").replace(" ", "")))
    if not selected or set(selected) - set(MEASUREMENTS):
        parser.error(f"--only takes letters of {','.join(MEASUREMENTS)}, got {args.only!r}")
    args.selected = "".join(key for key in MEASUREMENTS if key in selected)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    scale = 1 / TINY_SHRINK**2 if args.tiny else 1
    args.scale = scale
    args.megapixels = args.megapixels or [size * scale for size in (1, 4, TARGET_MEGAPIXELS, 24)]
    if not args.worker:
        from benchmarking import check_report_paths

        check_report_paths(parser, args.output, args.markdown)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, json.loads(args.params))
        return
    import torch
    from benchmarking import load_average, machine_description, write_report, write_text

    started = time.perf_counter()
    machine = machine_description("cpu")
    machine["load_average_start"] = load_average()
    trees = ["baseline", "current"] if set(args.selected) - set(CURRENT_ONLY) else ["current"]
    report = {
        "benchmark": "user paths: pipeline, own vocabularies, CLI folder, peak memory, forward vs floor, bf16",
        "tiny": args.tiny,
        "model": "tiny (tests/helpers.py towers), COCO-Stuff vocabulary"
        if args.tiny
        else "ViT-B/16 at 512x512, COCO-Stuff preset (171 classes, 15 templates, 50 prompt tokens), random weights",
        "baseline": {"ref": args.baseline_ref},
        "current": {
            "commit": git("rev-parse", "HEAD").strip(),
            "uncommitted_changes": bool(git("status", "--porcelain")),
        },
        "machine": machine,
        "settings": {
            "measurements": args.selected,
            "repeats": args.repeats,
            "torch_threads": args.threads or torch.get_num_threads(),
            "megapixels": args.megapixels,
            "memory_cap_gib": args.memory_cap_gib,
        },
    }
    with tempfile.TemporaryDirectory(prefix="cascade-clip-user-paths-") as temp_name:
        temp = Path(temp_name)
        paths = {"current": REPOSITORY}
        if "baseline" in trees:
            (temp / "baseline").mkdir()
            report["baseline"]["commit"] = unpack_revision(args.baseline_ref, temp / "baseline")
            paths["baseline"] = temp / "baseline"
        common = {
            "model_dir": str(temp / "model"),
            "labels": str(temp / "labels.txt"),
            "photos": str(temp / "photos"),
            "repeats": args.repeats,
            "threads": args.threads,
            "tiny": args.tiny,
        }
        runner = Runner(args, temp, paths, common)
        built = runner.run("current", "build")
        if "failed" in built:
            raise SystemExit(f"error: building the benchmark model failed: {built['failed']}")
        report["model_parameters"] = built["parameters"]
        Path(common["labels"]).write_text("\n".join(built["class_names"]) + "\n", encoding="utf-8")
        if "baseline" in trees:
            loaded = runner.run("baseline", "load")
            if "failed" in loaded:
                raise SystemExit(
                    f"error: the baseline {args.baseline_ref} cannot load the model saved by this tree: "
                    f"{loaded['failed']}"
                )
        if "e" in args.selected:
            Path(common["photos"]).mkdir()
            width, height = scaled(1280, args.tiny), scaled(960, args.tiny)
            for index in range(FOLDER_PHOTOS):
                random_photo(width, height, seed=100 + index).save(
                    Path(common["photos"]) / f"photo-{index}.jpg", quality=90
                )

        def save(results: dict) -> None:
            report["results"] = results
            report["figures"] = figure_rows(results, args.megapixels)
            report["targets"] = target_rows(results, machine, args.scale)
            write_report(args.output, report)

        results = run_measurements(args, runner, args.selected, trees, save)
    machine["load_average_end"] = load_average()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    save(results)
    table = markdown(report)
    write_text(args.markdown, table + "\n")
    print(table)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
