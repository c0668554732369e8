"""Builds a Cascade-CLIP to train from a transformers CLIP checkpoint, carrying its weights over like the original."""

import torch
from transformers import CLIPModel, CLIPTokenizer
from transformers.utils import logging

from .configuration_cascade_clip import CascadeClipConfig
from .hub import pretrained_options
from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation, resize_position_grid
from .vocabulary import embed_class_names, load_tokenizer


logger = logging.get_logger(__name__)


def fold_class_embedding(positions: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
    """
    The original adds the class embedding to the CLS token twice (once as the token, once with its position);
    transformers' CLIP adds it once, so the second copy goes into the first position embedding.

    Args:
        positions (`torch.Tensor` of shape `(1 + num_patches, hidden_size)`).
        class_embedding (`torch.Tensor` of shape `(hidden_size,)`).
    """
    positions = positions.clone()
    positions[0] += class_embedding
    return positions


def cascade_clip_from_clip(
    clip_name_or_path: str,
    *,
    preset: str | None = None,
    setting: str = "inductive",
    image_size: int = 512,
    tokenizer: CLIPTokenizer | None = None,
    init_taps_from_clip: bool = False,
    clip_kwargs: dict | None = None,
    **config_kwargs,
) -> CascadeClipForZeroShotSegmentation:
    """
    A Cascade-CLIP to train from a transformers `CLIPModel` checkpoint, as the original builds it: CLIP's position
    embeddings resized bilinearly to the `image_size` grid, both towers' weights carried over, the default
    vocabulary embedded with the text tower, and CLIP frozen except the prompts (the tapped layers' projections stay
    random and frozen). See [`CascadeClipForZeroShotSegmentation.from_clip_pretrained`] for the arguments.
    """
    clip = CLIPModel.from_pretrained(
        clip_name_or_path, **{**pretrained_options(clip_name_or_path), **(clip_kwargs or {})}
    )
    preset_kwargs = CascadeClipConfig.from_preset(preset, setting).to_diff_dict() if preset else {}
    for tower_key in ("vision_config", "text_config", "projection_dim", "transformers_version", "model_type"):
        preset_kwargs.pop(tower_key, None)
    # CLIPModel projects both towers to its top-level projection_dim, whatever its sub-configurations say.
    projection_dim = clip.config.projection_dim
    vision_config = {**clip.config.vision_config.to_dict(), "image_size": image_size, "projection_dim": projection_dim}
    text_config = {**clip.config.text_config.to_dict(), "projection_dim": projection_dim}
    config = CascadeClipConfig(
        vision_config=vision_config,
        text_config=text_config,
        projection_dim=projection_dim,
        **{**preset_kwargs, **config_kwargs},
    )
    model = CascadeClipForZeroShotSegmentation(config)

    vision_state = clip.vision_model.state_dict()
    grid_size = image_size // config.vision_config.patch_size
    positions = vision_state["embeddings.position_embedding.weight"]
    if positions.shape[0] != grid_size * grid_size + 1:
        logger.info(f"Resizing CLIP's position embeddings from {positions.shape[0] - 1} to {grid_size}^2 patches.")
        positions = torch.cat([positions[:1], resize_position_grid(positions[1:], (grid_size, grid_size))])
    vision_state["embeddings.position_embedding.weight"] = fold_class_embedding(
        positions, vision_state["embeddings.class_embedding"]
    )
    vision_state.pop("embeddings.position_ids", None)
    model.vision_encoder.clip.vision_model.load_state_dict(vision_state, strict=False)
    model.vision_encoder.clip.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    model.text_encoder.text_model.load_state_dict(clip.text_model.state_dict())
    model.text_encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    if init_taps_from_clip:
        for tap in model.vision_encoder.taps:
            tap.projection.weight.data.copy_(clip.visual_projection.weight)

    if config.num_labels:
        tokenizer = tokenizer or load_tokenizer(clip_name_or_path, **(clip_kwargs or {}))
        class_embeds = embed_class_names(model, tokenizer, config.class_names, config.templates)
        model.set_vocabulary(config.class_names, class_embeds, config.seen_class_ids)
    model.freeze_pretrained()
    return model
