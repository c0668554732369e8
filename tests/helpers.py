"""Builders and constants the tests share: fixture paths, the tiny models' settings, images and example scripts.

Test modules import these from here, never from `conftest.py` (which holds only fixtures) or from one another.
"""

import functools
import importlib.util
import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import CLIPConfig, CLIPTokenizer

from cascade_clip_hf import (
    CascadeClipConfig,
    CascadeClipForZeroShotSegmentation,
    CascadeClipImageProcessor,
    CascadeClipProcessor,
)


FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL_TINY = FIXTURES / "official_tiny"
CLIP_TOKENIZER = FIXTURES / "clip_tokenizer"
EXAMPLES = Path(__file__).parent.parent / "examples"
HUB_CLASSES = ["red thing", "green thing", "blue thing", "grey thing"]

# The tiny CLIP's towers: a 2x2 grid of 16-pixel patches at 32 pixels, and twelve vision layers like ViT-B/16,
# so that the default cascade stages (layers 5 to 10, then the last) exist.
TINY_VISION_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 12,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 16,
    "projection_dim": 16,
}
TINY_TEXT_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 16,
}
# The resolution tiny Cascade-CLIPs are built at from the tiny CLIP: a 4x4 grid of patches.
TINY_IMAGE_SIZE = 64
# The Cascade-CLIP arguments that keep the prompts and decoders as small as the towers.
TINY_CASCADE_KWARGS = {"num_prompt_tokens": 3, "decoder_num_attention_heads": 2, "decoder_intermediate_size": 32}


def tiny_clip_config() -> CLIPConfig:
    """The configuration of the tiny transformers CLIP the tiny Cascade-CLIPs start from."""
    return CLIPConfig(vision_config=dict(TINY_VISION_CONFIG), text_config=dict(TINY_TEXT_CONFIG), projection_dim=16)


def tiny_config(**overrides) -> CascadeClipConfig:
    """A tiny Cascade-CLIP configuration on the tiny CLIP's towers, with no vocabulary unless `overrides` give one."""
    towers = {"vision_config": dict(TINY_VISION_CONFIG), "text_config": dict(TINY_TEXT_CONFIG)}
    return CascadeClipConfig(**{**towers, **TINY_CASCADE_KWARGS, **overrides})


def tiny_cascade(clip_dir: Path, **overrides) -> CascadeClipForZeroShotSegmentation:
    """A tiny Cascade-CLIP built from the tiny CLIP checkpoint in `clip_dir` at `TINY_IMAGE_SIZE` pixels."""
    settings = {"image_size": TINY_IMAGE_SIZE, **TINY_CASCADE_KWARGS, **overrides}
    return CascadeClipForZeroShotSegmentation.from_clip_pretrained(str(clip_dir), **settings)


def save_tiny_cascade(tiny_clip_dir: Path, path: Path, class_names: list[str], **config) -> Path:
    """A tiny Cascade-CLIP without dropout (so that runs are comparable) and a processor at its small scale."""
    torch.manual_seed(0)
    model = tiny_cascade(
        tiny_clip_dir,
        id2label=dict(enumerate(class_names)),
        slide_crop_size=TINY_IMAGE_SIZE,
        slide_stride=53,
        prompt_dropout=0.0,
        decoder_dropout=0.0,
        decoder_attention_dropout=0.0,
        **config,
    )
    seen = model.config.seen_class_ids
    processor = CascadeClipProcessor(
        CascadeClipImageProcessor(
            size={"shortest_edge": TINY_IMAGE_SIZE, "longest_edge": 256}, mask_size=TINY_IMAGE_SIZE
        ),
        CLIPTokenizer.from_pretrained(tiny_clip_dir),
        templates=model.config.templates,
        seen_classes=[class_names[i] for i in seen] if seen is not None else list(class_names),
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def random_image(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    """An RGB image of uniform random pixels, the same for the same seed."""
    return PIL.Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def reference_segmentation(model_dir, image, class_names=None) -> np.ndarray:
    """The class-index map computed directly with the model and processor (the pipelines' expected answer)."""
    model = CascadeClipForZeroShotSegmentation.from_pretrained(model_dir).eval()
    processor = CascadeClipProcessor.from_pretrained(model_dir)
    inputs = processor(images=image, text=class_names)
    with torch.no_grad():
        scores = model.sliding_window_inference(
            inputs["pixel_values"],
            output_size=image.size[::-1],
            input_ids=inputs.get("input_ids"),
            attention_mask=inputs.get("attention_mask"),
            seen_class_mask=inputs.get("seen_class_mask"),
        )
    return processor.post_process_semantic_segmentation(scores)[0].numpy()


@functools.cache
def load_script(path: Path):
    """An example script as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(script: str, args: list[str], num_processes: int = 1, timeout: int = 300, returncode: int = 0):
    """
    Runs an example script as a user would: plainly, or with `accelerate launch` on several CPU processes; fails
    unless it exits with `returncode`.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if num_processes == 1:
        command = [sys.executable, str(EXAMPLES / script)]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(EXAMPLES / script),
        ]
    try:
        result = subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode(errors="replace") + (error.stderr or b"").decode(errors="replace")
        raise AssertionError(f"{script} did not finish in {timeout} s:\n{output[-6000:]}") from None
    assert result.returncode == returncode, (
        f"{script} exited with {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return result


def python_without_package(folder: Path) -> list[str]:
    """
    The command that starts the python of a new virtualenv in `folder`, which sees this environment's libraries
    but not this package, as on a machine that runs a saved model's remote code without the package installed.
    It runs isolated (`-I`): `PYTHONPATH` (which may name this checkout) and the current folder stay out too.
    """
    venv = folder / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site_packages = subprocess.run(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # A path line in a .pth adds the directory without running that directory's own .pth files, so the
    # package's editable-install hook stays out.
    (venv / site_packages.split("/venv/", 1)[1] / "libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return [python, "-I"]


def conversion_flags(meta: dict) -> list[str]:
    """The `cascade-clip convert` flags for the official tiny checkpoint, with the settings of its meta.json."""
    architecture = meta["architecture"]
    return [
        "--class-names",
        ",".join(meta["class_names"]),
        "--seen-class-ids",
        ",".join(map(str, meta["seen_class_ids"])),
        "--extract-layers",
        ",".join(map(str, architecture["extract_layers"])),
        "--templates",
        meta["prompt_template"],
        "--tokenizer",
        str(CLIP_TOKENIZER),
        "--vision-heads",
        str(architecture["vision_heads"]),
        "--text-heads",
        str(architecture["text_heads"]),
        "--decoder-heads",
        str(architecture["decoder_heads"]),
    ]
