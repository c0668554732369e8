"""Converts a checkpoint of the original Cascade-CLIP release (mmsegmentation layout) to a `save_pretrained` folder."""

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging

from .atomic import MODEL, atomic_directory, check_output_folder
from .configuration_cascade_clip import CascadeClipConfig
from .convert_clip_checkpoint import fold_class_embedding
from .errors import counted
from .image_processing_cascade_clip import CascadeClipImageProcessor
from .model_card import build_model_card
from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation
from .presets import BACKGROUND_ZERO_BENCHMARKS, benchmark_facts, stages_from_layers
from .processing_cascade_clip import CascadeClipProcessor
from .vocabulary import DEFAULT_TEMPLATES, check_class_names, embed_class_names, load_class_embeddings, load_tokenizer


logger = logging.get_logger(__name__)

DEFAULT_TOKENIZER = "openai/clip-vit-base-patch16"
DEFAULT_EXTRACT_LAYERS = (5, 6, 7, 8, 9, 10)

# Keys the original checkpoint carries that the model does not use: the decoder layers' self-attention and its
# norm (built by torch's TransformerDecoderLayer, never called) and the loss's buffers.
DROPPED_KEY_PATTERNS = (
    r"decode_head\.cascade_decoders\.\d+\.layers\.\d+\.(self_attn|norm1)\..+",
    r"decode_head\.loss_decode\..+",
)

# Within one transformer block of either tower: original name -> transformers CLIP name.
BLOCK_KEYS = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
}
DECODER_LAYER_KEYS = {
    "multihead_attn.q": "cross_attention.q_proj",
    "multihead_attn.k": "cross_attention.k_proj",
    "multihead_attn.v": "cross_attention.v_proj",
    "multihead_attn.proj": "cross_attention.out_proj",
    "norm2": "attention_layernorm",
    "linear1": "fc1",
    "linear2": "fc2",
    "norm3": "ffn_layernorm",
}
VISION = "vision_encoder.clip.vision_model."
TEXT = "text_encoder.text_model."
HEAD = "decode_head."


class CheckpointError(ValueError):
    """An original checkpoint that cannot be converted, with what is wrong."""


@dataclass
class ConversionReport:
    """What a conversion did, for the user to read."""

    mapped: int = 0
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"Converted {counted(self.mapped, 'tensor')}; dropped {counted(len(self.dropped), 'unused key')}."]
        return "\n".join(lines + [f"- {note}" for note in self.notes])


def load_original_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Loads an original checkpoint safely (`weights_only=True`); returns its state dict and its `meta`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged or unsafe files
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({type(error).__name__}: {error}).")
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state_dict, meta = checkpoint["state_dict"], checkpoint.get("meta") or {}
    elif isinstance(checkpoint, dict) and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        state_dict, meta = checkpoint, {}
    else:
        raise CheckpointError(f"{path}: expected an mmseg checkpoint {{'meta', 'state_dict'}} or a bare state dict.")
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {not_tensors[:5]}.")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict, meta if isinstance(meta, dict) else {}


def require(state_dict: dict[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    """A tensor the conversion cannot do without, with the expected number of dimensions."""
    if key not in state_dict:
        raise CheckpointError(f"The checkpoint lacks {key!r}; is it an original Cascade-CLIP (ViT) checkpoint?")
    tensor = state_dict[key]
    if tensor.dim() != ndim:
        raise CheckpointError(f"{key!r} should have {ndim} dimensions, has shape {tuple(tensor.shape)}.")
    return tensor


def count_indexed(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    """How many consecutive indices `pattern` (with one `(\\d+)` group) matches among the keys, checking for gaps."""
    indices = {int(match.group(1)) for key in state_dict if (match := re.fullmatch(pattern, key))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"Keys matching {pattern!r} skip indices: found {sorted(indices)}.")
    return len(indices)


def heads_for(width: int, heads: int | None, what: str, flag: str) -> int:
    """The attention head count: given, or width / 64 as CLIP's towers use; checked to divide the width."""
    heads = heads if heads is not None else max(width // 64, 1)
    if heads < 1:
        raise CheckpointError(f"The {what} needs at least one attention head, got {heads}: pass {flag} 1 or more.")
    if width % heads != 0:
        raise CheckpointError(f"The {what} is {width} wide, which {heads} heads do not divide: pass {flag}.")
    return heads


def infer_config(
    state_dict: dict[str, torch.Tensor],
    *,
    class_names: Sequence[str],
    seen_class_ids: Sequence[int] | None,
    setting: str,
    extract_layers: Sequence[int],
    templates: Sequence[str],
    vision_heads: int | None = None,
    text_heads: int | None = None,
    decoder_heads: int | None = None,
    slide_crop_size: int = 512,
    slide_stride: int = 426,
) -> CascadeClipConfig:
    """Builds the configuration from the checkpoint's tensor shapes plus what shapes cannot tell."""
    vision_width = require(state_dict, "backbone.class_embedding", 1).shape[0]
    patch_size = require(state_dict, "backbone.conv1.weight", 4).shape[-1]
    num_positions = require(state_dict, "backbone.positional_embedding", 2).shape[0]
    grid_size = math.isqrt(num_positions - 1)
    if grid_size * grid_size != num_positions - 1:
        raise CheckpointError(
            f"backbone.positional_embedding has {counted(num_positions, 'row')}: not 1 + a square grid."
        )
    projection_dim = require(state_dict, "backbone.proj", 2).shape[1]
    vision_layers = count_indexed(state_dict, r"backbone\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight")
    text_width = require(state_dict, "text_encoder.ln_final.weight", 1).shape[0]
    text_layers = count_indexed(state_dict, r"text_encoder\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight")
    num_prompt_tokens = require(state_dict, "backbone.prompt_embeddings", 3).shape[1]
    deep_prompts = state_dict.get("backbone.deep_prompt_embeddings")
    num_taps = require(state_dict, "backbone.proj_layers", 3).shape[0]
    num_decoders = count_indexed(state_dict, r"decode_head\.cascade_decoders\.(\d+)\.layers\.0\.linear1\.weight")
    stage_sizes = [
        require(state_dict, f"decode_head.weights_s{stage + 1}", 1).shape[0] for stage in range(num_decoders - 1)
    ]

    if len(extract_layers) != num_taps:
        raise CheckpointError(
            f"The checkpoint taps {counted(num_taps, 'layer')}, but the tapped layers given are "
            f"{list(extract_layers)}: pass --extract-layers with {counted(num_taps, 'layer index', 'layer indices')}."
        )
    cascade_stages = stages_from_layers(list(extract_layers))
    if [len(stage) for stage in cascade_stages] != stage_sizes:
        raise CheckpointError(
            f"The checkpoint's stage weights have sizes {stage_sizes}, which the tapped layers {list(extract_layers)} "
            f"do not fill (they group into {cascade_stages})."
        )
    class_embedding_rows = len(class_names)
    if class_embedding_rows == 0:
        raise CheckpointError("No class names: pass --preset or --class-names.")
    return CascadeClipConfig(
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": state_dict["backbone.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "projection_dim": projection_dim,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": heads_for(vision_width, vision_heads, "vision tower", "--vision-heads"),
            "image_size": grid_size * patch_size,
            "patch_size": patch_size,
        },
        text_config={
            "vocab_size": require(state_dict, "text_encoder.token_embedding.weight", 2).shape[0],
            "hidden_size": text_width,
            "intermediate_size": state_dict["text_encoder.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "projection_dim": require(state_dict, "text_encoder.text_projection", 2).shape[1],
            "num_hidden_layers": text_layers,
            "num_attention_heads": heads_for(text_width, text_heads, "text tower", "--text-heads"),
            "max_position_embeddings": require(state_dict, "text_encoder.positional_embedding", 2).shape[0],
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        projection_dim=projection_dim,
        num_prompt_tokens=num_prompt_tokens,
        num_prompt_layers=1 + (deep_prompts.shape[0] if deep_prompts is not None else 0),
        cascade_stages=cascade_stages,
        decoder_num_layers=count_indexed(
            state_dict, r"decode_head\.cascade_decoders\.0\.layers\.(\d+)\.linear1\.weight"
        ),
        decoder_num_attention_heads=decoder_heads if decoder_heads is not None else 8,
        decoder_intermediate_size=state_dict["decode_head.cascade_decoders.0.layers.0.linear1.weight"].shape[0],
        id2label=dict(enumerate(class_names)),
        seen_class_ids=list(seen_class_ids) if seen_class_ids is not None else None,
        setting=setting,
        templates=list(templates),
        slide_crop_size=slide_crop_size,
        slide_stride=slide_stride,
    )


def split_in_projection(prefix: str, tensor: torch.Tensor, out: dict[str, torch.Tensor], kind: str) -> None:
    """Splits a fused q/k/v in-projection into transformers' three projections."""
    query, key, value = tensor.chunk(3, dim=0)
    for name, part in (("q_proj", query), ("k_proj", key), ("v_proj", value)):
        out[f"{prefix}self_attn.{name}.{kind}"] = part


def convert_block(original_prefix: str, target_prefix: str, key: str, tensor, out) -> bool:
    """Maps one key of a transformer block; returns False if the key is not one."""
    match = re.fullmatch(re.escape(original_prefix) + r"transformer\.resblocks\.(\d+)\.(.+)", key)
    if match is None:
        return False
    layer, name = match.groups()
    prefix = f"{target_prefix}encoder.layers.{layer}."
    if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
        split_in_projection(prefix, tensor, out, "weight" if name.endswith("weight") else "bias")
    elif name in BLOCK_KEYS:
        out[prefix + BLOCK_KEYS[name]] = tensor
    else:
        return False
    return True


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """
    Maps every original key to the model's keys. Fused attention projections are split, the class-token quirk is
    folded into the first position embedding, and unused keys are dropped; an unknown key is an error.
    """
    report = ConversionReport()
    out: dict[str, torch.Tensor] = {}
    unknown = []
    prompt_sets = [require(state_dict, "backbone.prompt_embeddings", 3)[0]]
    if "backbone.deep_prompt_embeddings" in state_dict:
        prompt_sets.extend(state_dict["backbone.deep_prompt_embeddings"])
    direct = {
        "backbone.class_embedding": VISION + "embeddings.class_embedding",
        "backbone.conv1.weight": VISION + "embeddings.patch_embedding.weight",
        "backbone.ln_pre.weight": VISION + "pre_layrnorm.weight",
        "backbone.ln_pre.bias": VISION + "pre_layrnorm.bias",
        "backbone.ln_post.weight": VISION + "post_layernorm.weight",
        "backbone.ln_post.bias": VISION + "post_layernorm.bias",
        "backbone.prompt_proj.weight": "vision_encoder.prompts.projection.weight",
        "backbone.prompt_proj.bias": "vision_encoder.prompts.projection.bias",
        "backbone.prompt_norm.weight": "vision_encoder.prompt_layernorm.weight",
        "backbone.prompt_norm.bias": "vision_encoder.prompt_layernorm.bias",
        "text_encoder.token_embedding.weight": TEXT + "embeddings.token_embedding.weight",
        "text_encoder.positional_embedding": TEXT + "embeddings.position_embedding.weight",
        "text_encoder.ln_final.weight": TEXT + "final_layer_norm.weight",
        "text_encoder.ln_final.bias": TEXT + "final_layer_norm.bias",
    }
    for key, tensor in state_dict.items():
        if any(re.fullmatch(pattern, key) for pattern in DROPPED_KEY_PATTERNS):
            report.dropped.append(key)
            continue
        if key in direct:
            out[direct[key]] = tensor
        elif key == "backbone.positional_embedding":
            positions = fold_class_embedding(tensor, state_dict["backbone.class_embedding"])
            out[VISION + "embeddings.position_embedding.weight"] = positions
        elif key in ("backbone.prompt_embeddings", "backbone.deep_prompt_embeddings"):
            out["vision_encoder.prompts.embeddings"] = torch.stack(prompt_sets)
        elif key == "backbone.proj":
            out["vision_encoder.clip.visual_projection.weight"] = tensor.t()
        elif key == "text_encoder.text_projection":
            out["text_encoder.text_projection.weight"] = tensor.t()
        elif key == "backbone.proj_layers":
            for index, projection in enumerate(tensor):
                out[f"vision_encoder.taps.{index}.projection.weight"] = projection.t()
        elif match := re.fullmatch(r"backbone\.ln_layers\.(\d+)\.(weight|bias)", key):
            out[f"vision_encoder.taps.{match[1]}.layernorm.{match[2]}"] = tensor
        elif match := re.fullmatch(r"decode_head\.weights_s(\d+)", key):
            out[f"{HEAD}aggregation.stage_weights.{int(match[1]) - 1}"] = tensor
        elif match := re.fullmatch(r"decode_head\.q_projs\.(\d+)\.(weight|bias)", key):
            out[f"{HEAD}decoders.{match[1]}.query_projection.{match[2]}"] = tensor
        elif match := re.fullmatch(r"decode_head\.cascade_decoders\.(\d+)\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            decoder, layer, name, kind = match.groups()
            if name not in DECODER_LAYER_KEYS:
                unknown.append(key)
                continue
            out[f"{HEAD}decoders.{decoder}.layers.{layer}.{DECODER_LAYER_KEYS[name]}.{kind}"] = tensor
        elif not (
            convert_block("backbone.", VISION, key, tensor, out)
            or convert_block("text_encoder.", TEXT, key, tensor, out)
        ):
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"The checkpoint has {counted(len(unknown), 'key')} this converter does not understand, e.g. "
            f"{unknown[:8]}. "
            "Only original Cascade-CLIP ViT checkpoints are supported."
        )
    report.mapped = len(state_dict) - len(report.dropped)
    return {key: tensor.contiguous() for key, tensor in out.items()}, report


def convert_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    preset: str | None = None,
    setting: str | None = None,
    class_names: Sequence[str] | None = None,
    class_embeddings: str | os.PathLike | None = None,
    seen_class_ids: Sequence[int] | None = None,
    extract_layers: Sequence[int] | None = None,
    templates: Sequence[str] | None = None,
    tokenizer: str = DEFAULT_TOKENIZER,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    decoder_heads: int | None = None,
    do_reduce_labels: bool | None = None,
) -> ConversionReport:
    """
    Converts an original checkpoint into a `save_pretrained` folder (safetensors weights, config, processor) with a
    model card whose licence is the original release's non-commercial terms, which converted weights keep (and
    which `cascade-clip export-onnx` and the Hub upload carry on).

    Settings come from `preset` (a benchmark of the original release), then from the explicit arguments, then
    from the checkpoint's `meta` (its class names). The default vocabulary's embeddings are read from
    `class_embeddings` when given (as the original release does), else computed with the checkpoint's text tower.
    The folder is written atomically: an existing `output_dir` is replaced only once the new one is complete, and
    only if it holds nothing but an earlier output of this program and none of the inputs (else `OutputFolderError`
    before any work, see `cascade_clip_hf.atomic`).
    """
    inputs = [path for path in (checkpoint_path, class_embeddings) if path is not None]
    check_output_folder(output_dir, inputs=inputs, kind=MODEL)
    state_dict, meta = load_original_checkpoint(checkpoint_path)
    setting = setting or "inductive"
    facts = benchmark_facts(preset, setting) if preset else {}
    class_names = check_class_names(class_names or facts.get("class_names") or meta.get("CLASSES") or [])
    if seen_class_ids is None:
        seen_class_ids = facts.get("seen_class_ids")
    templates = list(templates or facts.get("templates") or DEFAULT_TEMPLATES)
    config = infer_config(
        state_dict,
        class_names=class_names,
        seen_class_ids=seen_class_ids,
        setting=setting,
        extract_layers=list(extract_layers or facts.get("extract_layers") or DEFAULT_EXTRACT_LAYERS),
        templates=templates,
        vision_heads=vision_heads,
        text_heads=text_heads,
        decoder_heads=decoder_heads,
        slide_crop_size=facts.get("slide_crop", 512),
        slide_stride=facts.get("slide_stride", 426),
    )
    converted, report = convert_state_dict(state_dict)

    model = CascadeClipForZeroShotSegmentation(config)
    expected = model.state_dict()
    expected_keys = set(expected) - {"class_embeddings"}
    missing = sorted(expected_keys - set(converted))
    extra = sorted(set(converted) - expected_keys)
    if missing or extra:
        raise CheckpointError(f"The converted weights do not fit the model: missing {missing[:8]}, extra {extra[:8]}.")
    wrong_shapes = [
        f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[key].shape)}"
        for key, tensor in converted.items()
        if tensor.shape != expected[key].shape
    ]
    if wrong_shapes:
        raise CheckpointError("Tensor shapes do not fit the inferred model:\n" + "\n".join(wrong_shapes[:8]))
    model.load_state_dict(converted, strict=False)
    model.eval()

    clip_tokenizer = load_tokenizer(tokenizer)
    if class_embeddings is not None:
        class_embeds = load_class_embeddings(class_embeddings, len(class_names), config.projection_dim)
        report.notes.append(f"default vocabulary embeddings read from {class_embeddings}")
    else:
        class_embeds = embed_class_names(model, clip_tokenizer, class_names, templates)
        report.notes.append(
            f"default vocabulary embedded with the text tower over {counted(len(templates), 'template')}"
        )
    model.set_vocabulary(class_names, class_embeds, seen_class_ids)

    if do_reduce_labels is None:
        do_reduce_labels = preset in BACKGROUND_ZERO_BENCHMARKS
    seen_classes = config.seen_class_names
    processor = CascadeClipProcessor(
        image_processor=CascadeClipImageProcessor(
            do_reduce_labels=do_reduce_labels, mask_size=config.vision_config.image_size
        ),
        tokenizer=clip_tokenizer,
        templates=templates,
        seen_classes=seen_classes,
    )
    card = build_model_card(
        config,
        repo_id=Path(output_dir).name,
        dataset=preset,
        summary=(
            "Cascade-CLIP for zero-shot semantic segmentation, converted by `cascade-clip convert` from the original "
            f"release's checkpoint `{Path(checkpoint_path).name}`."
        ),
    )
    with atomic_directory(output_dir, inputs, kind=MODEL) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        card.save(staging / "README.md")

    vision, text = config.vision_config, config.text_config
    report.notes.extend(
        [
            f"vision tower: {counted(vision.num_hidden_layers, 'layer')}, width {vision.hidden_size}, "
            f"{counted(vision.num_attention_heads, 'head')}, patch {vision.patch_size}, image size "
            f"{vision.image_size}",
            f"text tower: {counted(text.num_hidden_layers, 'layer')}, width {text.hidden_size}, "
            f"{counted(text.num_attention_heads, 'head')}",
            f"prompts: {counted(config.num_prompt_tokens, 'token')} in {counted(config.num_prompt_layers, 'layer')}; "
            f"stages {config.cascade_stages} + final layer",
            f"decoders: {config.num_decoders} x {counted(config.decoder_num_layers, 'layer')}, "
            f"{counted(config.decoder_num_attention_heads, 'head')}",
            f"classes: {len(class_names)}, seen: {len(seen_classes)}, setting: {setting}",
            "class-token quirk folded into the first position embedding",
            f"written to {output_dir}",
        ]
    )
    return report
