import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from cascade_clip_hf import CascadeClipForZeroShotSegmentation
from cascade_clip_hf.fixture_parity import convert_fixture


FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL_TINY = FIXTURES / "official_tiny"
CLIP_TOKENIZER = FIXTURES / "clip_tokenizer"


@pytest.fixture(scope="session")
def official_meta() -> dict:
    return json.loads((OFFICIAL_TINY / "meta.json").read_text())


@pytest.fixture(scope="session")
def official_model_dir(tmp_path_factory) -> Path:
    """The fixture's original checkpoint converted with the settings of its meta.json."""
    return convert_fixture(OFFICIAL_TINY, tmp_path_factory.mktemp("official") / "model", str(CLIP_TOKENIZER))


@pytest.fixture
def official_model(official_model_dir) -> CascadeClipForZeroShotSegmentation:
    return CascadeClipForZeroShotSegmentation.from_pretrained(official_model_dir).eval()


@pytest.fixture(scope="session")
def clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, clip_tokenizer) -> Path:
    """A tiny random transformers CLIP checkpoint (224-style 2x2 grid at 32 pixels) with the real tokenizer."""
    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 12,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
            "projection_dim": 16,
        },
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "projection_dim": 16,
        },
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(config).save_pretrained(path)
    clip_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_clip_dir) -> Path:
    """A tiny Cascade-CLIP built from the tiny CLIP, with a default vocabulary of four classes."""
    torch.manual_seed(0)
    model = CascadeClipForZeroShotSegmentation.from_clip_pretrained(
        str(tiny_clip_dir),
        image_size=64,
        id2label={0: "cat", 1: "dog", 2: "grass", 3: "sky"},
        seen_class_ids=[0, 2],
        num_prompt_tokens=3,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        templates=["a photo of a {}.", "a {} in the scene."],
    )
    path = tmp_path_factory.mktemp("tiny_cascade") / "model"
    model.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model(tiny_model_dir) -> CascadeClipForZeroShotSegmentation:
    return CascadeClipForZeroShotSegmentation.from_pretrained(tiny_model_dir).eval()


EXAMPLES = Path(__file__).parent.parent / "examples"
HUB_CLASSES = ["red thing", "green thing", "blue thing", "grey thing"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(script: str, args: list[str], num_processes: int = 1, timeout: int = 300):
    """Runs an example script as a user would: plainly, or with `accelerate launch` on several CPU processes."""
    import os
    import subprocess
    import sys

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
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="session")
def hub_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """A save_to_disk dataset of four fully labelled classes, and its id2label.json."""
    import json

    from .synthetic import write_hub_dataset

    root = tmp_path_factory.mktemp("hub_dataset")
    id2label = root / "id2label.json"
    id2label.write_text(json.dumps({str(i): name for i, name in enumerate(HUB_CLASSES)}))
    return write_hub_dataset(root / "data", num_classes=len(HUB_CLASSES)), id2label


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory) -> Path:
    from .synthetic import write_voc

    return write_voc(tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2012")


def save_tiny_cascade(tiny_clip_dir: Path, path: Path, class_names: list[str], **config) -> Path:
    """A tiny Cascade-CLIP without dropout (so that runs are comparable) and a processor at its small scale."""
    from cascade_clip_hf import CascadeClipImageProcessor, CascadeClipProcessor

    torch.manual_seed(0)
    model = CascadeClipForZeroShotSegmentation.from_clip_pretrained(
        str(tiny_clip_dir),
        image_size=64,
        id2label=dict(enumerate(class_names)),
        num_prompt_tokens=3,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        slide_crop_size=64,
        slide_stride=53,
        prompt_dropout=0.0,
        decoder_dropout=0.0,
        decoder_attention_dropout=0.0,
        **config,
    )
    seen = model.config.seen_class_ids
    processor = CascadeClipProcessor(
        CascadeClipImageProcessor(size={"shortest_edge": 64, "longest_edge": 256}),
        CLIPTokenizer.from_pretrained(tiny_clip_dir),
        templates=model.config.templates,
        seen_classes=[class_names[i] for i in seen] if seen is not None else list(class_names),
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_hub_model_dir(tmp_path_factory, tiny_clip_dir) -> Path:
    return save_tiny_cascade(tiny_clip_dir, tmp_path_factory.mktemp("tiny_hub") / "model", HUB_CLASSES)
