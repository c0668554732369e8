"""What `cascade-clip info` tells about a model: its vocabulary and settings, read without its weights."""

import torch

from .configuration_cascade_clip import CascadeClipConfig
from .errors import counted
from .model_card import card_data_of
from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation
from .processing_cascade_clip import CascadeClipProcessor
from .segmenter import cascade_clip_source


def model_info(model_name: str) -> dict:
    """
    The vocabulary and settings of the Cascade-CLIP model `model_name` (a folder or a Hub id), from its
    `config.json`, processor files and model card. No weights are read: the parameters are counted on the model
    built on torch's meta device, which holds no data.

    Returns:
        `dict`, ready for JSON: `model` (the name given), `toy_world`, `setting`, `classes` (`id`, `name`, `seen`
        for each class of the default vocabulary), `templates`, `image_size` and `patch_size` (pixels), `resize`
        (the processor's test-time `size`), `slide_crop_size` and `slide_stride` (pixels), `projection_dim`,
        `vision_layers`, `vision_width`, `text_layers`, `text_width`, `prompt_tokens`, `prompt_layers`,
        `cascade_stages` (the tapped layers of each stage), `num_decoders`, `dtype` (of the weights, as the config
        records it; None if it does not), `parameters` and `license` (the model card's; None without one).

    Raises:
        ValueError: one line saying why `model_name` is not a Cascade-CLIP model here (see `cascade_clip_source`).
    """
    source, _, local_files_only = cascade_clip_source(model_name)
    config = CascadeClipConfig.from_pretrained(source, local_files_only=local_files_only)
    processor = CascadeClipProcessor.from_pretrained(source, local_files_only=local_files_only)
    seen = set(config.seen_class_ids if config.seen_class_ids is not None else config.id2label)
    with torch.device("meta"):
        parameters = CascadeClipForZeroShotSegmentation(config).num_parameters()
    vision, text = config.vision_config, config.text_config
    card = card_data_of(source)
    return {
        "model": model_name,
        "toy_world": config.toy_world,
        "setting": config.setting,
        "classes": [
            {"id": class_id, "name": config.id2label[class_id], "seen": class_id in seen}
            for class_id in sorted(config.id2label)
        ],
        "templates": list(processor.templates),
        "image_size": vision.image_size,
        "patch_size": vision.patch_size,
        "resize": dict(processor.image_processor.size),
        "slide_crop_size": config.slide_crop_size,
        "slide_stride": config.slide_stride,
        "projection_dim": config.projection_dim,
        "vision_layers": vision.num_hidden_layers,
        "vision_width": vision.hidden_size,
        "text_layers": text.num_hidden_layers,
        "text_width": text.hidden_size,
        "prompt_tokens": config.num_prompt_tokens,
        "prompt_layers": config.num_prompt_layers,
        "cascade_stages": config.cascade_stages,
        "num_decoders": config.num_decoders,
        "dtype": str(config.dtype).removeprefix("torch.") if config.dtype is not None else None,
        "parameters": parameters,
        "license": str(card.license) if card and card.license else None,
    }


def format_model_info(info: dict) -> str:
    """`info` (see `model_info`) as text to read: the settings, one a line, then the classes, one a line."""
    unseen = [entry for entry in info["classes"] if not entry["seen"]]
    vocabulary = counted(len(info["classes"]), "class", "classes")
    if unseen:
        vocabulary += f": {len(info['classes']) - len(unseen)} seen in training, {len(unseen)} unseen (marked below)"
    templates = counted(len(info["templates"]), "template")
    if info["templates"]:
        templates += f', e.g. "{info["templates"][0]}"'
    stages = ", ".join(str(stage) for stage in info["cascade_stages"])
    settings = {
        "toy world": "yes: it knows only the toy-world scenes of cascade_clip_hf.toy_world, not photos"
        if info["toy_world"]
        else "no",
        "setting": info["setting"],
        "vocabulary": vocabulary,
        "templates": templates,
        "image size": f"{info['image_size']}x{info['image_size']} pixels, {info['patch_size']}-pixel patches",
        "resize": ", ".join(f"{side} {pixels}" for side, pixels in info["resize"].items()),
        "sliding window": f"{info['slide_crop_size']}-pixel crops, stride {info['slide_stride']}",
        "vision tower": f"{info['vision_layers']} layers of width {info['vision_width']}, "
        f"deep visual prompts of {info['prompt_tokens']} tokens in {info['prompt_layers']} layers",
        "text tower": f"{info['text_layers']} layers of width {info['text_width']}",
        "projection dim": str(info["projection_dim"]),
        "cascade stages": f"{stages or 'none'}, then the last layer: {counted(info['num_decoders'], 'decoder')}",
        "dtype": info["dtype"] or "not recorded",
        "parameters": f"{info['parameters']:,}",
        "license": info["license"] or "not stated",
    }
    width = max(map(len, settings)) + 2
    lines = [info["model"], *(f"{name + ':':<{width}}{value}" for name, value in settings.items())]
    lines += ["", "classes (id: name):"]
    id_width = len(str(max((entry["id"] for entry in info["classes"]), default=0)))
    lines += [
        f"  {entry['id']:>{id_width}}: {entry['name']}{'' if entry['seen'] else '  (unseen)'}"
        for entry in info["classes"]
    ]
    return "\n".join(lines)
