"""PyTorch Cascade-CLIP: zero-shot semantic segmentation with cascaded vision-language embedding alignment.

The paper's parts, top to bottom: the CLIP vision tower with deep visual prompts (`CascadeClipDeepPrompts`,
`CascadeClipVisionEncoder`), the decode head with the neighbourhood Gaussian aggregation of each cascade stage's
layers (`CascadeClipNeighborhoodGaussianAggregation`) and one text-queried decoder per stage
(`CascadeClipCascadedDecoders`), the training loss (`segmentation_loss`: sigmoid focal + dice, transductive
pseudo-labels), the seen-class calibration (`calibration.py`) and the test-time sliding window
(`CascadeClipForZeroShotSegmentation.sliding_window_inference`).
"""

import itertools
import math
import os
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.checkpoint import checkpoint
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection, PreTrainedModel
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer, eager_attention_forward
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .atomic import MODEL, write_unless_taken
from .calibration import seen_score_shift, upsample_mask_logits
from .configuration_cascade_clip import CascadeClipConfig
from .labels import HIDDEN_LABEL
from .pipeline_cascade_clip import check_class_embeds
from .sliding_window import ClassMap, check_window, sliding_window_results
from .vocabulary import check_distinct_class_embeddings, digest_tensors, seen_class_mask


logger = logging.get_logger(__name__)

# The loss upsamples this many mask values (64 MiB of float32) at a time.
LOSS_CHUNK_ELEMENTS = 2**24
# Results of the text tower (class embeddings of this many vocabularies) kept while its weights stay the same.
TEXT_TOWER_CACHE_SIZE = 8
# Class prompts go through the text tower this many at a time, in batches of prompts of similar length.
PROMPT_BATCH_SIZE = 256
# Embedding more prompts than this shows a progress bar.
PROGRESS_BAR_MIN_PROMPTS = 500


class OptimizerStepCount:
    """
    How many optimizer steps this process has taken, counted by a hook on every `torch.optim.Optimizer`. Fused
    steps (e.g. `AdamW(fused=True)`) write the weights without touching their version counters: the text tower's
    cache (see `CascadeClipForZeroShotSegmentation.text_tower_state`) forgets after any step.
    """

    steps = 0

    @classmethod
    def count(cls, optimizer, args, kwargs) -> None:
        cls.steps += 1


register_optimizer_step_post_hook(OptimizerStepCount.count)


def in_place_changes(tensor: torch.Tensor) -> int | tuple[float, float, float]:
    """
    What changes when `tensor` is written in place: autograd's version counter, or, for an inference tensor (which
    has none), a summary of its values in float64: its row sums and column sums, each weighted by position, and its
    L2 norm.
    """
    if tensor.is_inference():
        values = tensor if tensor.is_floating_point() else tensor.double()
        grid = values.reshape(values.shape[0], -1) if values.dim() > 0 else values.reshape(1, 1)
        row_sums, column_sums = grid.sum(1, dtype=torch.float64), grid.sum(0, dtype=torch.float64)
        # Sums weighted by position, so that reordered rows or columns count as a change too.
        row_weights = torch.arange(1, len(row_sums) + 1, dtype=torch.float64, device=grid.device)
        column_weights = torch.arange(1, len(column_sums) + 1, dtype=torch.float64, device=grid.device)
        norm = torch.linalg.vector_norm(values, dtype=torch.float64)
        return tuple(torch.stack([row_sums @ row_weights, column_sums @ column_weights, norm]).tolist())
    return tensor._version


@dataclass
class CascadeClipSegmentationOutput(ModelOutput):
    r"""
    Output of [`CascadeClipForZeroShotSegmentation`]. Every tensor is batch-first, so that slicing the output per
    image (as transformers' pipelines do) keeps each image's own values.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            `mask_loss + dice_loss`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_classes, grid_height, grid_width)`):
            Mask logits at the resolution of the patch grid: the sum of the decoders' mask logits. Upsample them
            (bilinearly) and take the sigmoid, minus `score_shift`, to get per-pixel class scores.
        decoder_logits (`torch.FloatTensor` of shape `(batch_size, num_decoders, num_classes, height, width)`):
            Each decoder's mask logits on the patch grid: the cascade stages in order, then the final layer.
        class_embeds (`torch.FloatTensor` of shape `(batch_size, num_classes, projection_dim)`):
            The class embeddings the masks were decoded for (the same for every image).
        image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            The L2-normalised global image embedding (the projected CLS token).
        score_shift (`torch.FloatTensor` of shape `(batch_size, num_classes)`):
            What calibration subtracts from each class's sigmoid score: `seen_score_shift` for classes seen in
            training by an inductive model, 0 otherwise (the same for every image).
        mask_loss (`torch.FloatTensor` of shape `()`, *optional*):
            The weighted sigmoid focal loss.
        dice_loss (`torch.FloatTensor` of shape `()`, *optional*):
            The weighted dice loss.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The vision tower's embedding output and the output of every layer, each of shape
            `(batch_size, sequence_length, hidden_size)`; the sequence holds the CLS token, the prompt tokens where
            the layer has them, and the patch tokens.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            The vision tower's attention weights of every layer, each of shape
            `(batch_size, num_heads, sequence_length, sequence_length)` (with `attn_implementation="eager"`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    decoder_logits: torch.FloatTensor | None = None
    class_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    score_shift: torch.FloatTensor | None = None
    mask_loss: torch.FloatTensor | None = None
    dice_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    @property
    def vision_hidden_states(self) -> tuple[torch.FloatTensor, ...] | None:
        warnings.warn("`vision_hidden_states` is now `hidden_states`.", FutureWarning, stacklevel=2)
        return self.hidden_states


def resize_position_grid(grid_embeddings: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """
    Resizes square-grid position embeddings bilinearly, as the original does.

    Args:
        grid_embeddings (`torch.Tensor` of shape `(grid_size * grid_size, hidden_size)`).
        size (`tuple[int, int]`): the target `(height, width)` of the grid.

    Returns:
        `torch.Tensor` of shape `(height * width, hidden_size)`.
    """
    grid_size = math.isqrt(grid_embeddings.shape[0])
    hidden_size = grid_embeddings.shape[1]
    grid = grid_embeddings.reshape(1, grid_size, grid_size, hidden_size).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    return grid.reshape(hidden_size, size[0] * size[1]).transpose(0, 1)


def drop_token_positions(branch: torch.Tensor, rate: float) -> torch.Tensor:
    """
    Stochastic depth as the original applies it: its blocks run on (sequence, batch, width) tensors, so timm's
    per-sample mask falls on token positions, shared by every image of the batch.

    Args:
        branch (`torch.Tensor` of shape `(batch_size, sequence_length, hidden_size)`): a residual branch's output.
    """
    keep = 1 - rate
    return branch * branch.new_empty(1, branch.shape[1], 1).bernoulli_(keep).div_(keep)


def class_embeddings_of_prompts(prompt_embeds: torch.Tensor, prompts_shape: tuple[int, ...]) -> torch.Tensor:
    """
    Class embeddings from the projected text embeddings of their prompts, as the original computes them: each
    prompt's embedding L2-normalised and, with several templates a class, averaged over them and normalised again.

    Args:
        prompt_embeds (`torch.Tensor` of shape `(num_prompts, projection_dim)`): in the order of the flattened
            `input_ids`.
        prompts_shape: `(num_classes,)` for one prompt a class, or `(num_classes, num_templates)`.

    Returns:
        `torch.Tensor` of shape `(num_classes, projection_dim)`.
    """
    class_embeds = F.normalize(prompt_embeds, dim=-1)
    if len(prompts_shape) == 2:
        class_embeds = F.normalize(class_embeds.view(*prompts_shape, -1).mean(dim=1), dim=-1)
    return class_embeds


class CascadeClipEncoderLayer(CLIPEncoderLayer):
    """transformers' CLIP encoder layer with the original's stochastic depth on both residual branches in training."""

    def __init__(self, config, drop_path_rate: float = 0.0):
        super().__init__(config)
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        if not (self.training and self.drop_path_rate > 0):
            return super().forward(hidden_states, attention_mask, **kwargs)
        attention_output, _ = self.self_attn(self.layer_norm1(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + drop_token_positions(attention_output, self.drop_path_rate)
        return hidden_states + drop_token_positions(self.mlp(self.layer_norm2(hidden_states)), self.drop_path_rate)


class CascadeClipDeepPrompts(nn.Module):
    """Deep visual prompts: learned tokens for each prompted encoder layer, all through one shared projection."""

    def __init__(self, config: CascadeClipConfig):
        super().__init__()
        width = config.vision_config.hidden_size
        self.embeddings = nn.Parameter(torch.zeros(config.num_prompt_layers, config.num_prompt_tokens, width))
        self.projection = nn.Linear(width, width)
        self.dropout = nn.Dropout(config.prompt_dropout)

    def forward(self, layer_index: int, batch_size: int) -> torch.Tensor:
        """Returns the prompt tokens of one layer, of shape `(batch_size, num_prompt_tokens, hidden_size)`."""
        prompts = self.projection(self.embeddings[layer_index])
        return self.dropout(prompts.expand(batch_size, -1, -1))


class CascadeClipLayerTap(nn.Module):
    """Turns one tapped encoder layer's patch tokens into joint-space features: LayerNorm, then projection."""

    def __init__(self, config: CascadeClipConfig):
        super().__init__()
        self.layernorm = nn.LayerNorm(config.vision_config.hidden_size, eps=config.vision_config.layer_norm_eps)
        self.projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layernorm(patch_tokens))


class CascadeClipVisionEncoder(nn.Module):
    """
    A transformers CLIP vision tower run layer by layer with deep visual prompts, returning L2-normalised
    joint-space patch features of the tapped layers and of the final layer, and the global image embedding.
    """

    def __init__(self, config: CascadeClipConfig):
        super().__init__()
        self.config = config
        self.clip = CLIPVisionModelWithProjection._from_config(config.vision_config)
        num_layers = config.vision_config.num_hidden_layers
        # On the CPU, so that the rates are plain floats also when the model is built on the meta device.
        drop_path_rates = torch.linspace(0, config.vision_drop_path_rate, num_layers, device="cpu").tolist()
        self.clip.vision_model.encoder.layers = nn.ModuleList(
            [CascadeClipEncoderLayer(config.vision_config, rate) for rate in drop_path_rates]
        )
        self.prompts = CascadeClipDeepPrompts(config)
        self.prompt_layernorm = nn.LayerNorm(config.vision_config.hidden_size, eps=config.prompt_layer_norm_eps)
        self.taps = nn.ModuleList([CascadeClipLayerTap(config) for _ in config.extract_layers])
        self.grid_size = config.vision_config.image_size // config.vision_config.patch_size

    def embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """
        Patch embedding plus position embeddings, the grid part resized bilinearly when the input's grid differs
        from the configured one.

        Returns:
            The embeddings, of shape `(batch_size, 1 + height * width, hidden_size)`, and the grid `(height, width)`.
        """
        embeddings = self.clip.vision_model.embeddings
        patch_embeds = embeddings.patch_embedding(pixel_values.to(embeddings.patch_embedding.weight.dtype))
        batch_size, hidden_size, height, width = patch_embeds.shape
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)

        positions = embeddings.position_embedding.weight
        grid_positions = positions[1:]
        if (height, width) != (self.grid_size, self.grid_size):
            grid_positions = resize_position_grid(grid_positions, (height, width))
        class_embeds = (embeddings.class_embedding + positions[0]).expand(batch_size, 1, hidden_size)
        return torch.cat([class_embeds, patch_embeds + grid_positions], dim=1), (height, width)

    def forward(
        self, pixel_values: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor, tuple[int, int], torch.Tensor]:
        """
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`).

        Returns:
            - one `(batch_size, grid_height * grid_width, projection_dim)` feature map per tapped layer, then one
              for the final layer, all L2-normalised;
            - the L2-normalised global image embedding, `(batch_size, projection_dim)`;
            - the grid `(grid_height, grid_width)`;
            - the last layer's output, `(batch_size, sequence_length, hidden_size)`.
        """
        vision_model = self.clip.vision_model
        hidden_states, grid = self.embed(pixel_values)
        hidden_states = vision_model.pre_layrnorm(hidden_states)
        batch_size, num_patches = hidden_states.shape[0], grid[0] * grid[1]
        tap_index = {layer: index for index, layer in enumerate(self.config.extract_layers)}

        features = []
        for layer_index, encoder_layer in enumerate(vision_model.encoder.layers):
            class_token, patch_tokens = hidden_states[:, :1], hidden_states[:, -num_patches:]
            if layer_index < self.config.num_prompt_layers:
                # Layer 0 inserts its prompts after the CLS token; later layers overwrite the prompt slots.
                prompts = self.prompts(layer_index, batch_size).to(hidden_states.dtype)
                hidden_states = torch.cat([class_token, prompts, patch_tokens], dim=1)
            else:
                hidden_states = torch.cat([class_token, patch_tokens], dim=1)
            # Called as a module: output capturing (hidden states, attentions) and checkpointing hook in there.
            hidden_states = encoder_layer(hidden_states, None)
            if layer_index in tap_index:
                patch_tokens = self.prompt_layernorm(hidden_states[:, -num_patches:])
                features.append(F.normalize(self.taps[tap_index[layer_index]](patch_tokens), dim=-1))

        final_tokens = torch.cat([hidden_states[:, :1], hidden_states[:, -num_patches:]], dim=1)
        final_tokens = self.clip.visual_projection(vision_model.post_layernorm(self.prompt_layernorm(final_tokens)))
        features.append(F.normalize(final_tokens[:, 1:], dim=-1))
        image_embeds = F.normalize(final_tokens[:, 0], dim=-1)
        return features, image_embeds, grid, hidden_states


class CascadeClipNeighborhoodGaussianAggregation(nn.Module):
    r"""
    Neighbourhood Gaussian aggregation (NGA): each cascade stage fuses the features of its neighbouring tapped layers
    with learned weights that start as a Gaussian of the distance to the stage's deepest layer,

    $$F_s = \sum_{l \in s} w_l F_l, \qquad w_l \leftarrow \exp\left(-\frac{(l_s - l)^2}{2}\right)\ \text{at
    initialisation},$$

    where $l_s$ is the last layer of stage $s$ (for layers 5, 6, 7: weights $e^{-2}, e^{-1/2}, 1$).
    """

    def __init__(self, config: CascadeClipConfig):
        super().__init__()
        self.stage_weights = nn.ParameterList(
            [nn.Parameter(torch.ones(len(stage))) for stage in config.cascade_stages]
        )

    def forward(self, layer_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """
        Args:
            layer_features (`list[torch.Tensor]`): the tapped layers' features, stage after stage, each of shape
                `(batch_size, num_patches, projection_dim)`.

        Returns:
            One fused `(batch_size, num_patches, projection_dim)` feature map per stage.
        """
        fused, start = [], 0
        for weights in self.stage_weights:
            stage_features = layer_features[start : start + len(weights)]
            fused.append(sum(weight * feature for weight, feature in zip(weights, stage_features, strict=True)))
            start += len(weights)
        return fused


class CascadeClipCrossAttention(nn.Module):
    """Multi-head attention from class queries to visual tokens, whose pre-softmax logits are also the masks."""

    def __init__(self, config: CascadeClipConfig):
        super().__init__()
        hidden_size = config.projection_dim
        self.config = config
        self.is_causal = False
        self.num_heads = config.decoder_num_attention_heads
        self.head_dim = hidden_size // self.num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.attention_dropout = nn.Dropout(config.decoder_attention_dropout)

    def project(self, projection: nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
        """`(batch_size, length, hidden_size)` -> `(batch_size, num_heads, length, head_dim)`."""
        batch_size, length, _ = tokens.shape
        return projection(tokens).view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

    def attention_logits(self, queries: torch.Tensor, visual_tokens: torch.Tensor) -> torch.Tensor:
        """
        Args:
            queries (`torch.Tensor` of shape `(batch_size, num_classes, hidden_size)`).
            visual_tokens (`torch.Tensor` of shape `(batch_size, num_patches, hidden_size)`).

        Returns:
            The scaled pre-softmax attention logits, `(batch_size, num_heads, num_classes, num_patches)`.
        """
        query_states = self.project(self.q_proj, queries)
        key_states = self.project(self.k_proj, visual_tokens)
        return (query_states @ key_states.transpose(-1, -2)) * self.scale

    def forward(self, queries: torch.Tensor, visual_tokens: torch.Tensor) -> torch.Tensor:
        """Returns the attention output, `(batch_size, num_classes, hidden_size)`."""
        batch_size, num_classes, _ = queries.shape
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attention_output, _ = attention_interface(
            self,
            self.project(self.q_proj, queries),
            self.project(self.k_proj, visual_tokens),
            self.project(self.v_proj, visual_tokens),
            None,
            scaling=self.scale,
            dropout=self.attention_dropout.p if self.training else 0.0,
        )
        return self.out_proj(attention_output.reshape(batch_size, num_classes, -1))


class CascadeClipDecoderLayer(GradientCheckpointingLayer):
    """Cross-attention from class queries to visual tokens, then a ReLU feed-forward; post-norm residuals."""

    def __init__(self, config: CascadeClipConfig):
        super().__init__()
        hidden_size = config.projection_dim
        self.cross_attention = CascadeClipCrossAttention(config)
        self.attention_layernorm = nn.LayerNorm(hidden_size, eps=config.decoder_layer_norm_eps)
        self.fc1 = nn.Linear(hidden_size, config.decoder_intermediate_size)
        self.fc2 = nn.Linear(config.decoder_intermediate_size, hidden_size)
        self.ffn_layernorm = nn.LayerNorm(hidden_size, eps=config.decoder_layer_norm_eps)
        self.dropout = nn.Dropout(config.decoder_dropout)

    def forward(self, queries: torch.Tensor, visual_tokens: torch.Tensor) -> torch.Tensor:
        queries = self.attention_layernorm(queries + self.dropout(self.cross_attention(queries, visual_tokens)))
        ffn_output = self.fc2(self.dropout(F.relu(self.fc1(queries))))
        return self.ffn_layernorm(queries + self.dropout(ffn_output))

    def unused_by_masks(self) -> list[nn.Module]:
        """What a decoder's last layer computes that its masks (the attention logits) do not depend on."""
        attention = self.cross_attention
        return [attention.v_proj, attention.out_proj, self.attention_layernorm, self.fc1, self.fc2, self.ffn_layernorm]


class CascadeClipDecoder(nn.Module):
    """
    Decodes one stage's visual tokens into class mask logits. The class queries combine each class embedding
    with the image embedding; the masks are the last layer's attention logits, averaged over heads, so that layer's
    attention output and feed-forward part are never computed (the original computes and discards them) and never
    trained.
    """

    def __init__(self, config: CascadeClipConfig):
        super().__init__()
        self.query_projection = nn.Linear(2 * config.projection_dim, config.projection_dim)
        self.layers = nn.ModuleList([CascadeClipDecoderLayer(config) for _ in range(config.decoder_num_layers)])
        for module in self.layers[-1].unused_by_masks():
            module.requires_grad_(False)

    def forward(
        self, class_embeds: torch.Tensor, image_embeds: torch.Tensor, visual_tokens: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            class_embeds (`torch.Tensor` of shape `(num_classes, projection_dim)`).
            image_embeds (`torch.Tensor` of shape `(batch_size, projection_dim)`).
            visual_tokens (`torch.Tensor` of shape `(batch_size, num_patches, projection_dim)`).

        Returns:
            Mask logits of shape `(batch_size, num_classes, num_patches)`.
        """
        class_embeds = class_embeds.expand(image_embeds.shape[0], -1, -1)
        image_conditioned = image_embeds[:, None, :] * class_embeds
        queries = self.query_projection(torch.cat([image_conditioned, class_embeds], dim=-1))
        for layer in self.layers[:-1]:
            queries = layer(queries, visual_tokens)
        return self.layers[-1].cross_attention.attention_logits(queries, visual_tokens).mean(dim=1)


class CascadeClipCascadedDecoders(nn.Module):
    """
    The decode head: each cascade stage's features, fused by neighbourhood Gaussian aggregation, and the final
    layer's features are decoded by a decoder of their own; the decoders' mask logits are summed.
    """

    def __init__(self, config: CascadeClipConfig):
        super().__init__()
        self.aggregation = CascadeClipNeighborhoodGaussianAggregation(config)
        self.decoders = nn.ModuleList([CascadeClipDecoder(config) for _ in range(config.num_decoders)])

    def forward(
        self,
        layer_features: list[torch.Tensor],
        class_embeds: torch.Tensor,
        image_embeds: torch.Tensor,
        grid: tuple[int, int],
    ) -> tuple[torch.Tensor, ...]:
        """
        Args:
            layer_features (`list[torch.Tensor]`): the tapped layers' features, stage after stage, then the final
                layer's, each of shape `(batch_size, grid_height * grid_width, projection_dim)`.
            class_embeds (`torch.Tensor` of shape `(num_classes, projection_dim)`).
            image_embeds (`torch.Tensor` of shape `(batch_size, projection_dim)`).
            grid (`tuple[int, int]`): `(grid_height, grid_width)`.

        Returns:
            One `(batch_size, num_classes, grid_height, grid_width)` tensor of mask logits per decoder.
        """
        stage_inputs = self.aggregation(layer_features[:-1]) + [layer_features[-1]]
        batch_size = image_embeds.shape[0]
        return tuple(
            decoder(class_embeds, image_embeds, visual_tokens).view(batch_size, -1, *grid)
            for decoder, visual_tokens in zip(self.decoders, stage_inputs, strict=True)
        )


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """
    Per-mask sigmoid focal loss, averaged over pixels.

    Args:
        logits (`torch.Tensor` of shape `(batch_size, num_classes, num_pixels)`).
        targets (`torch.BoolTensor` of the same shape).

    Returns:
        `torch.Tensor` of shape `(batch_size, num_classes)`.
    """
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    probs = logits.sigmoid()
    miss = torch.where(targets, 1 - probs, probs)
    alpha_weight = torch.where(targets, alpha, 1 - alpha)
    return (alpha_weight * cross_entropy * miss**gamma).mean(dim=-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    Per-mask dice loss with +1 smoothing.

    Args:
        logits (`torch.Tensor` of shape `(batch_size, num_classes, num_pixels)`).
        targets (`torch.BoolTensor` of the same shape).

    Returns:
        `torch.Tensor` of shape `(batch_size, num_classes)`.
    """
    probs = logits.sigmoid()
    targets = targets.to(probs.dtype)
    overlap = 2 * (probs * targets).sum(dim=-1)
    total = probs.sum(dim=-1) + targets.sum(dim=-1)
    return 1 - (overlap + 1) / (total + 1)


@torch.no_grad()
def fill_pseudo_labels(
    logits: torch.Tensor, labels: torch.Tensor, unseen_class_ids: list[int], ignore_index: int
) -> torch.Tensor:
    """
    The original's transductive step: each hidden pixel (`HIDDEN_LABEL`) takes the unseen class with the highest
    current score; without unseen classes, hidden pixels are ignored.

    Args:
        logits (`torch.Tensor` of shape `(batch_size, num_classes, height, width)`): at the labels' size.
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`).
        unseen_class_ids (`list[int]`): indices of the unseen classes among the logits' classes.

    Returns:
        The labels with every hidden pixel filled.
    """
    hidden = labels == HIDDEN_LABEL
    if not unseen_class_ids:
        return labels.masked_fill(hidden, ignore_index)
    unseen = torch.tensor(unseen_class_ids, device=logits.device)
    pseudo = unseen[logits[:, unseen].sigmoid().argmax(dim=1)]
    return torch.where(hidden, pseudo, labels)


def count_present_masks(present: torch.Tensor) -> float:
    """The number of (image, class) masks present, averaged over processes when training is distributed."""
    num_masks = present.sum().to(torch.float32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_masks)
        num_masks = num_masks / dist.get_world_size()
    return max(num_masks.item(), 1.0)


def chunk_loss_sums(
    logits: torch.Tensor, labels: torch.Tensor, first_class: int, present: torch.Tensor, config: CascadeClipConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Focal loss summed over the masks of some consecutive classes, and dice loss summed over those present.

    Args:
        logits (`torch.Tensor` of shape `(batch_size, chunk_classes, grid_height, grid_width)`).
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`): -1 where ignored.
        first_class (`int`): the class index of the chunk's first class.
        present (`torch.BoolTensor` of shape `(batch_size, chunk_classes)`).
    """
    logits = upsample_mask_logits(logits, labels.shape[-2:], config.vision_config.image_size).flatten(2)
    classes = torch.arange(first_class, first_class + logits.shape[1], device=labels.device)
    targets = labels.flatten(1)[:, None, :] == classes[None, :, None]
    focal = sigmoid_focal_loss(logits, targets, config.focal_alpha, config.focal_gamma).sum()
    return focal, dice_loss(logits, targets)[present].sum()


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, config: CascadeClipConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The original's training loss: sigmoid focal loss over every (image, class) mask, where ignored pixels are
    negatives for every class, and dice loss over the masks present; both divided by the number of masks present in
    the batch. As in the original, the logits are upsampled to `image_size` and from there to the labels' size.

    The upsampled masks (batch x classes x height x width floats) are never held at once: the loss runs over chunks
    of classes, and when gradients are needed each chunk is recomputed during the backward pass.

    Args:
        logits (`torch.Tensor` of shape `(batch_size, num_classes, grid_height, grid_width)`).
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`): class indices, or `config.ignore_index`.

    Returns:
        The weighted focal loss and the weighted dice loss.
    """
    batch_size, num_classes = logits.shape[:2]
    if labels.dim() != 3 or labels.shape[0] != batch_size:
        raise ValueError(
            f"labels must have shape (batch_size={batch_size}, height, width), got {tuple(labels.shape)}."
        )
    ignore_index = config.ignore_index
    valid = labels != ignore_index
    if ((labels < 0) | (labels >= num_classes))[valid].any():
        found = sorted(set(labels[valid].unique().tolist()) - set(range(num_classes)))
        raise ValueError(
            f"labels hold values {found[:10]} that are neither class indices (0..{num_classes - 1}) nor "
            f"ignore_index ({ignore_index})."
        )
    labels = labels.masked_fill(~valid, -1)
    pixel_counts = torch.zeros(batch_size, num_classes + 1, dtype=torch.long, device=labels.device)
    pixel_counts.scatter_add_(1, (labels + 1).flatten(1), torch.ones_like(labels).flatten(1))
    present = pixel_counts[:, 1:] > 0
    num_masks = count_present_masks(present)

    classes_per_chunk = max(LOSS_CHUNK_ELEMENTS // (batch_size * labels[0].numel()), 1)
    focal = dice = logits.new_zeros(())
    for start in range(0, num_classes, classes_per_chunk):
        end = start + classes_per_chunk
        chunk = (logits[:, start:end], labels, start, present[:, start:end], config)
        if torch.is_grad_enabled() and logits.requires_grad:
            chunk_focal, chunk_dice = checkpoint(chunk_loss_sums, *chunk, use_reentrant=False)
        else:
            chunk_focal, chunk_dice = chunk_loss_sums(*chunk)
        focal, dice = focal + chunk_focal, dice + chunk_dice
    return config.focal_loss_weight * focal / num_masks, config.dice_loss_weight * dice / num_masks


class CascadeClipPreTrainedModel(PreTrainedModel):
    config: CascadeClipConfig
    config_class = CascadeClipConfig
    base_model_prefix = "cascade_clip"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPEncoderLayer", "CascadeClipDecoderLayer"]
    # The vision tower's; the text tower records its own while it runs.
    _can_record_outputs = {"hidden_states": CLIPEncoderLayer, "attentions": CLIPAttention}

    @classmethod
    def is_custom_code(cls) -> bool:
        # transformers skips parameter-less containers (CLIPAttention, CLIPMLP, ...) of custom-code models when it
        # initialises missing weights; `_init_weights` below only uses `transformers.initialization`, which is safe.
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # Children are initialised before their parents, so the parents below override these defaults.
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, CascadeClipDeepPrompts):
            patch_size = self.config.vision_config.patch_size
            bound = math.sqrt(6.0 / (3 * patch_size * patch_size + module.embeddings.shape[-1]))
            init.uniform_(module.embeddings, -bound, bound)
            init.kaiming_normal_(module.projection.weight, a=0, mode="fan_out")
            fan_in_bound = 1 / math.sqrt(module.projection.in_features)
            init.uniform_(module.projection.bias, -fan_in_bound, fan_in_bound)
        elif isinstance(module, CascadeClipLayerTap):
            init.normal_(module.projection.weight, std=module.projection.in_features**-0.5)
        elif isinstance(module, CascadeClipNeighborhoodGaussianAggregation):
            for stage_weights in module.stage_weights:
                distances = torch.arange(len(stage_weights) - 1, -1, -1, dtype=torch.float32)
                init.copy_(stage_weights, torch.exp(-0.5 * distances**2))
        elif isinstance(module, CascadeClipForZeroShotSegmentation):
            init.zeros_(module.class_embeddings)


class CascadeClipForZeroShotSegmentation(CascadeClipPreTrainedModel):
    """
    Cascade-CLIP for zero-shot semantic segmentation: segments an image into any classes named in text.

    The vision tower's tapped layers are grouped into cascade stages; each stage's features (fused by neighbourhood
    Gaussian aggregation) and the final layer's are decoded by a decoder of their own into class mask logits, which
    are summed. Classes come from `input_ids` (class prompts run through the CLIP text tower), precomputed
    `class_embeds`, or the model's default vocabulary (`config.id2label`), whose embeddings are stored in the
    weights.
    """

    def __init__(self, config: CascadeClipConfig):
        super().__init__(config)
        self.vision_encoder = CascadeClipVisionEncoder(config)
        self.text_encoder = CLIPTextModelWithProjection._from_config(config.text_config)
        self.decode_head = CascadeClipCascadedDecoders(config)
        self.register_buffer("class_embeddings", torch.zeros(config.num_labels, config.projection_dim))
        self.clear_text_tower_cache()
        self.post_init()
        if config.toy_world:
            logger.warning_once(
                "This is a toy model (the shipped demo model): it knows only the toy-world scenes of "
                "cascade_clip_hf.toy_world, and its results on photos mean nothing: segment photos with a converted "
                "or trained Cascade-CLIP checkpoint."
            )

    def _apply(self, fn, *args, **kwargs):
        # `.to()`, `.half()`, `.cuda()` swap the weights' data under the same tensor objects and version counters,
        # and a round trip may even get the old addresses back: nothing computed from the old weights may survive.
        self.clear_text_tower_cache()
        return super()._apply(fn, *args, **kwargs)

    def clear_text_tower_cache(self) -> None:
        """
        Forgets the class embeddings (and other results of the text tower) kept by `text_tower_memo`. Needed only
        after writing the text tower's weights behind autograd's back (through `.data`), which nothing else sees.
        """
        self._text_tower_cache = {"state": None, "results": OrderedDict()}

    def text_tower_state(self) -> tuple:
        """
        What identifies the text tower's weights as they are now: the attention implementation, the number of
        optimizer steps taken in this process (see `OptimizerStepCount`), and for every parameter and buffer the
        tensor object, its address, dtype, device, shape and what its in-place changes change (see
        `in_place_changes`: `copy_`, `load_state_dict`, an unfused optimizer step).
        """
        tensors = itertools.chain(self.text_encoder.parameters(), self.text_encoder.buffers())
        return (
            self.text_encoder.config._attn_implementation,
            OptimizerStepCount.steps,
            *((id(t), t.data_ptr(), t.dtype, t.device, tuple(t.shape), in_place_changes(t)) for t in tensors),
        )

    def text_tower_memo(self, key, compute: Callable[[], object]):
        """
        `compute()`, remembered under `key` while the text tower's weights stay the same (see `text_tower_state`;
        the last `TEXT_TOWER_CACHE_SIZE` keys). Every result of other weights is forgotten as soon as they change.
        Tensors are copied in and out, so that neither `compute` nor the caller can change the remembered one.
        """
        state, cache = self.text_tower_state(), self._text_tower_cache
        if cache["state"] != state:
            cache["state"] = state
            cache["results"].clear()
        results = cache["results"]
        if key in results:
            results.move_to_end(key)
        else:
            value = compute()
            results[key] = value.detach().clone() if isinstance(value, torch.Tensor) else value
            if len(results) > TEXT_TOWER_CACHE_SIZE:
                results.popitem(last=False)
        value = results[key]
        return value.clone() if isinstance(value, torch.Tensor) else value

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """
        `PreTrainedModel.save_pretrained`, also writing the zero-shot segmentation pipeline's code and naming it in
        `config.custom_pipelines`, so that `pipeline("zero-shot-image-segmentation", model=...,
        trust_remote_code=True)` works where this package is not installed, naming the model for `AutoModel` too, and
        the Inference Endpoints handler (`handler.py`), unless the folder holds a different `handler.py` this package
        did not write, which is kept. (The model's own code and the rest of `auto_map` are written by transformers
        because the package registers its classes for the Auto classes.)
        """
        from .pipeline_cascade_clip import zero_shot_pipeline_entry

        os.makedirs(save_directory, exist_ok=True)
        pipeline_file = Path(__file__).with_name("pipeline_cascade_clip.py")
        shutil.copyfile(pipeline_file, Path(save_directory) / pipeline_file.name)
        handler_file = Path(__file__).with_name("handler.py")
        # A copy of this module loaded as remote code has no handler beside it, and saves none.
        if handler_file.is_file() and not write_unless_taken(
            save_directory, "handler.py", handler_file.read_bytes(), MODEL
        ):
            logger.warning(
                f"Kept the handler.py in {save_directory}, which cascade-clip did not write; the model's Inference "
                "Endpoints handler is not saved there (move that file away to get it)."
            )
        self.config.custom_pipelines = zero_shot_pipeline_entry()
        # transformers names a class for one Auto class only (its `_auto_class`) and adds it to this map.
        model_reference = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": model_reference}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_clip_pretrained(
        cls,
        clip_name_or_path: str,
        *,
        preset: str | None = None,
        setting: str = "inductive",
        image_size: int = 512,
        tokenizer: CLIPTokenizer | None = None,
        init_taps_from_clip: bool = False,
        clip_kwargs: dict | None = None,
        **config_kwargs,
    ) -> "CascadeClipForZeroShotSegmentation":
        """
        Builds a Cascade-CLIP to train from a transformers CLIP checkpoint, as the original does: CLIP's
        position embeddings resized bilinearly to the `image_size` grid, CLIP frozen except the prompts, and the
        tapped layers' projections random and frozen (see `convert_clip_checkpoint.py`).

        Args:
            clip_name_or_path (`str`): a `CLIPModel` checkpoint, e.g. `"openai/clip-vit-base-patch16"`.
            preset (`str`, *optional*): a benchmark whose original settings to take (classes, seen classes,
                prompt tokens, tapped layers, templates), see [`CascadeClipConfig.from_preset`].
            setting (`str`): `"inductive"` or `"transductive"`, with `preset`.
            image_size (`int`): the training resolution; sets the position-embedding grid.
            tokenizer (`CLIPTokenizer`, *optional*): to embed the default vocabulary; loaded from
                `clip_name_or_path` when not given.
            init_taps_from_clip (`bool`): initialise the tapped layers' projections from CLIP's visual
                projection instead of randomly.
            clip_kwargs (`dict`, *optional*): passed to `CLIPModel.from_pretrained` (e.g. `cache_dir`, `revision`).
            config_kwargs: any [`CascadeClipConfig`] argument (e.g. `id2label`, `seen_class_ids`,
                `num_prompt_tokens`), applied after the preset.

        Raises:
            ValueError: for a tokenizer without vocabulary files, or classes it cannot tell apart.
        """
        from .convert_clip_checkpoint import cascade_clip_from_clip

        return cascade_clip_from_clip(
            clip_name_or_path,
            preset=preset,
            setting=setting,
            image_size=image_size,
            tokenizer=tokenizer,
            init_taps_from_clip=init_taps_from_clip,
            clip_kwargs=clip_kwargs,
            **config_kwargs,
        )

    def get_input_embeddings(self) -> nn.Module:
        return self.text_encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.text_encoder.set_input_embeddings(value)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """
        The text tower's outputs for tokenized prompts, one per prompt.

        Args:
            input_ids (`torch.LongTensor` of shape `(num_prompts, sequence_length)`).
            attention_mask (`torch.LongTensor` of the same shape, *optional*).

        Returns:
            [`BaseModelOutputWithPooling`] whose `pooler_output`, of shape `(num_prompts, projection_dim)`, holds
            the projected (not normalised) prompt embeddings; see `get_class_embeddings` for class embeddings.
        """
        text_outputs = self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=text_outputs.last_hidden_state,
            pooler_output=text_outputs.text_embeds,
            hidden_states=text_outputs.hidden_states,
            attentions=text_outputs.attentions,
        )

    @capture_outputs(tie_last_hidden_states=False)
    def get_image_features(
        self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        """
        The prompted vision tower's outputs.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`).

        Returns:
            [`BaseModelOutputWithPooling`] whose `last_hidden_state`, of shape `(batch_size, sequence_length,
            hidden_size)`, is the last layer's output and whose `pooler_output`, of shape
            `(batch_size, projection_dim)`, is the L2-normalised global image embedding; `hidden_states` and
            `attentions` with `output_hidden_states` / `output_attentions`.
        """
        self.check_pixel_values(pixel_values)
        _, image_embeds, _, last_hidden_state = self.vision_encoder(pixel_values)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=image_embeds)

    def get_class_embeddings(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        class_names: list[str] | None = None,
    ) -> torch.Tensor:
        """
        The class embeddings of a vocabulary from its tokenized class prompts: each prompt's text embedding is
        L2-normalised, a class's templates are averaged and normalised again. Given the class names, checked to tell
        every class apart (a tokenizer that cannot read the names gives them one embedding).

        A vocabulary is embedded once: the result is kept (see `text_tower_memo`) under its tokens (names, templates
        and tokenizer), the autocast dtype in effect and the text tower's weights, and computed again whenever one of
        them differs. It is computed afresh, and not kept, when it must carry gradients (gradients enabled and a
        text-tower parameter requiring them) or the text tower's dropout is active. Weights written through `.data`
        (as PEFT's `merge_and_unload` does) change nothing autograd sees: call `clear_text_tower_cache()` after such
        a write.

        Args:
            input_ids (`torch.LongTensor` of shape `(num_classes, sequence_length)` or
                `(num_classes, num_templates, sequence_length)`): one prompt per class, or one per class and template.
            attention_mask (`torch.LongTensor` of the same shape, *optional*).
            class_names (`list[str]`, *optional*): the classes' names; with them, classes whose embeddings coincide
                are refused by name.

        Returns:
            `torch.FloatTensor` of shape `(num_classes, projection_dim)`, L2-normalised: the caller's own copy.

        Raises:
            ValueError: when two classes have the same embedding (the tokenizer cannot read their names apart).
        """
        if input_ids.dim() not in (2, 3):
            raise ValueError(
                "input_ids must have shape (num_classes, sequence_length) or (num_classes, num_templates, "
                f"sequence_length), got {tuple(input_ids.shape)}."
            )
        sequence_length = input_ids.shape[-1]
        context_length = self.config.text_config.max_position_embeddings
        if sequence_length > context_length:
            raise ValueError(
                f"The class prompts are {sequence_length} tokens long, but the text tower reads at most "
                f"{context_length}: shorten the longest class names or templates."
            )

        def compute() -> torch.Tensor:
            flat_mask = attention_mask.reshape(-1, sequence_length) if attention_mask is not None else None
            prompt_embeds = self.embed_prompts(input_ids.reshape(-1, sequence_length), flat_mask)
            return class_embeddings_of_prompts(prompt_embeds, input_ids.shape[:-1])

        needs_gradients = torch.is_grad_enabled() and any(p.requires_grad for p in self.text_encoder.parameters())
        drops_out = self.text_encoder.training and self.text_encoder.config.attention_dropout > 0
        if needs_gradients or drops_out:
            class_embeds = compute()
        else:
            tokens = digest_tensors([("input_ids", input_ids), ("attention_mask", attention_mask)])
            device_type = self.text_encoder.device.type
            autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
            class_embeds = self.text_tower_memo(("class_embeds", tokens, autocast), compute)
        if class_names is not None:
            check_distinct_class_embeddings(class_embeds, class_names)
        return class_embeds

    def embed_prompts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        The projected text embeddings of many prompts, as fast as the text tower allows: sorted by their length
        (up to their last attended token), in batches of `PROMPT_BATCH_SIZE`, each cut to its longest prompt. The
        result is that of one batch padded to `sequence_length`: CLIP pools each prompt at its end-of-text token
        under a causal mask, so the padding after it changes nothing. A progress bar (transformers' logging, see
        `transformers.utils.logging.disable_progress_bar`) shows more than `PROGRESS_BAR_MIN_PROMPTS` prompts.

        Args:
            input_ids (`torch.LongTensor` of shape `(num_prompts, sequence_length)`).
            attention_mask (`torch.LongTensor` of the same shape, *optional*).

        Returns:
            `torch.FloatTensor` of shape `(num_prompts, projection_dim)`, in the prompts' order, not normalised.
        """
        num_prompts, sequence_length = input_ids.shape
        if attention_mask is None:
            lengths = torch.full((num_prompts,), sequence_length, device=input_ids.device)
        else:
            positions = torch.arange(1, sequence_length + 1, device=attention_mask.device)
            lengths = ((attention_mask != 0) * positions).amax(dim=-1).clamp(min=1)
        lengths, order = torch.sort(lengths, stable=True)
        batches = []
        progress = logging.tqdm(
            total=num_prompts,
            desc="Embedding class prompts",
            unit="prompt",
            disable=num_prompts <= PROGRESS_BAR_MIN_PROMPTS,
        )
        with progress:
            for start in range(0, num_prompts, PROMPT_BATCH_SIZE):
                batch = order[start : start + PROMPT_BATCH_SIZE]
                length = int(lengths[start : start + PROMPT_BATCH_SIZE].max())
                batch_mask = attention_mask[batch, :length] if attention_mask is not None else None
                batches.append(self.get_text_features(input_ids[batch, :length], batch_mask).pooler_output)
                progress.update(len(batch))
        return torch.cat(batches)[order.argsort()]

    @torch.no_grad()
    def set_vocabulary(
        self,
        class_names: list[str],
        class_embeds: torch.Tensor,
        seen_class_ids: list[int] | None = None,
    ) -> None:
        """
        Replaces the default vocabulary: `config.id2label`, the stored class embeddings and the seen classes.

        Args:
            class_names (`list[str]`): the classes, in id order.
            class_embeds (`torch.FloatTensor` of shape `(num_classes, projection_dim)`): their embeddings.
            seen_class_ids (`list[int]`, *optional*): ids of the classes seen in training.
        """
        class_embeds = check_class_embeds(class_embeds, len(class_names), self.config.projection_dim)
        self.config.id2label = dict(enumerate(class_names))
        self.config.label2id = {name: class_id for class_id, name in enumerate(class_names)}
        self.config.seen_class_ids = list(seen_class_ids) if seen_class_ids is not None else None
        self.config.validate()
        # The model's own copy: a caller's tensor (or a view of another weight) must not change or share it.
        self.class_embeddings = class_embeds.detach().to(self.class_embeddings).clone()

    def freeze_pretrained(self) -> None:
        """
        Freezes what the original keeps frozen while training: both CLIP towers and the tapped layers' LayerNorms
        and projections. Prompts, the prompt LayerNorm, the stage weights and the decoders stay trainable, except
        the parts of each decoder's last layer that no output depends on (they would get no gradient).
        """
        self.requires_grad_(True)
        for frozen in (self.vision_encoder.clip, self.vision_encoder.taps, self.text_encoder):
            frozen.requires_grad_(False)
        for decoder in self.decode_head.decoders:
            for module in decoder.layers[-1].unused_by_masks():
                module.requires_grad_(False)

    def default_seen_class_mask(self) -> torch.Tensor:
        """`(num_labels,)` booleans: which classes of the default vocabulary were seen (all, without a split)."""
        mask = seen_class_mask(self.config.class_names, self.config.seen_class_names)
        return mask.to(self.class_embeddings.device)

    def resolve_class_embeds(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        class_embeds: torch.Tensor | None = None,
        seen_class_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The class embeddings to segment with and which of their classes were seen in training.

        Classes come from `class_embeds`, else from `input_ids`, else from the default vocabulary. Which classes
        count as seen comes from `seen_class_mask`, else, for the default vocabulary, from `config.seen_class_ids`;
        classes given as text or embeddings without a mask count as unseen.

        Returns:
            `class_embeds` of shape `(num_classes, projection_dim)` and `seen_class_mask` of shape `(num_classes,)`,
            on the embeddings' device.
        """
        if class_embeds is not None and input_ids is not None:
            raise ValueError("Pass either input_ids or class_embeds, not both.")
        if class_embeds is not None:
            class_embeds = check_class_embeds(class_embeds, embed_dim=self.config.projection_dim)
        elif input_ids is not None:
            class_embeds = self.get_class_embeddings(input_ids, attention_mask)
        else:
            if self.config.num_labels == 0:
                raise ValueError(
                    "This model has no default vocabulary (config.id2label is empty): pass class names as "
                    "input_ids (see CascadeClipProcessor) or class_embeds."
                )
            class_embeds = self.class_embeddings
            if seen_class_mask is None:
                seen_class_mask = self.default_seen_class_mask()
        num_classes = class_embeds.shape[0]
        if num_classes == 0:
            raise ValueError("At least one class is needed to segment.")
        if seen_class_mask is None:
            seen_class_mask = torch.zeros(num_classes, dtype=torch.bool, device=class_embeds.device)
        if seen_class_mask.shape != (num_classes,):
            raise ValueError(
                f"seen_class_mask must have one entry per class ({num_classes}), got shape "
                f"{tuple(seen_class_mask.shape)}."
            )
        return class_embeds, seen_class_mask.to(class_embeds.device)

    def upsample_logits(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Upsamples grid-resolution logits to `size` the original's way: to `image_size` first, then to `size`."""
        return upsample_mask_logits(logits, size, self.config.vision_config.image_size)

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deprecated: the loss is `forward(..., labels=...)`, or `segmentation_loss(logits, labels, config)`."""
        warnings.warn(
            "`compute_loss` is deprecated: pass `labels` to the model, or call `segmentation_loss`.",
            FutureWarning,
            stacklevel=2,
        )
        return segmentation_loss(logits, labels, self.config)

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Raises a clear error for pixel values the vision tower cannot take."""
        vision_config = self.config.vision_config
        if pixel_values.dim() != 4 or pixel_values.shape[1] != vision_config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch_size, {vision_config.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}. Use CascadeClipImageProcessor to prepare images."
            )
        if min(pixel_values.shape[-2:]) < vision_config.patch_size:
            height, width = pixel_values.shape[-2:]
            raise ValueError(
                f"pixel_values of {width}x{height} pixels (width x height) are smaller than one "
                f"{vision_config.patch_size}x{vision_config.patch_size} patch on a side: the image is too thin once "
                "resized by the processor; crop it to a less elongated part."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be floating point (normalised), got {pixel_values.dtype}.")

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        class_embeds: torch.Tensor | None = None,
        seen_class_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CascadeClipSegmentationOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images (see [`CascadeClipImageProcessor`]). Sizes other than the configured
                `image_size` work: the position embeddings are resized.
            input_ids (`torch.LongTensor` of shape `(num_classes, sequence_length)` or
                `(num_classes, num_templates, sequence_length)`, *optional*):
                Tokenized class prompts (see [`CascadeClipProcessor`]).
            attention_mask (`torch.LongTensor` of the same shape as `input_ids`, *optional*).
            class_embeds (`torch.FloatTensor` of shape `(num_classes, projection_dim)`, *optional*):
                Precomputed L2-normalised class embeddings, used as given.
            seen_class_mask (`torch.BoolTensor` of shape `(num_classes,)`, *optional*):
                Which classes were seen in training (their scores get shifted by inductive models).
            labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
                Per-pixel indices into the classes, `config.ignore_index` for pixels without a class, and `-1`
                (`HIDDEN_LABEL`) for pixels of unseen classes that take the best-scoring unseen class (classes
                outside `seen_class_mask`) as their pseudo-label, as the original's transductive training does.
            kwargs: `output_hidden_states`, `output_attentions` (the vision tower's) and `return_dict`.

        Example:

        ```python
        >>> from PIL import Image
        >>> from cascade_clip_hf import CascadeClipForZeroShotSegmentation, CascadeClipProcessor

        >>> processor = CascadeClipProcessor.from_pretrained("org/cascade-clip-coco")
        >>> model = CascadeClipForZeroShotSegmentation.from_pretrained("org/cascade-clip-coco")
        >>> image = Image.open("street.jpg")
        >>> inputs = processor(images=image, text=["car", "road", "sky"], return_tensors="pt")
        >>> outputs = model(**inputs)
        >>> segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        ```"""
        self.check_pixel_values(pixel_values)
        class_embeds, seen_class_mask = self.resolve_class_embeds(
            input_ids, attention_mask, class_embeds, seen_class_mask
        )
        score_shift = seen_score_shift(
            seen_class_mask, self.config.setting, self.config.seen_score_shift, class_embeds.dtype
        )
        layer_features, image_embeds, grid, _ = self.vision_encoder(pixel_values)
        class_embeds = class_embeds.to(image_embeds.dtype)
        decoder_logits = self.decode_head(layer_features, class_embeds, image_embeds, grid)
        logits = sum(decoder_logits)

        loss = mask_loss = dice = None
        if labels is not None:
            if (labels == HIDDEN_LABEL).any():
                unseen_class_ids = (~seen_class_mask).nonzero().flatten().tolist()
                upsampled = self.upsample_logits(logits.detach(), labels.shape[-2:])
                labels = fill_pseudo_labels(upsampled, labels, unseen_class_ids, self.config.ignore_index)
            mask_loss, dice = segmentation_loss(logits, labels, self.config)
            loss = mask_loss + dice

        batch_size = pixel_values.shape[0]
        return CascadeClipSegmentationOutput(
            loss=loss,
            logits=logits,
            decoder_logits=torch.stack(decoder_logits, dim=1),
            class_embeds=class_embeds.expand(batch_size, -1, -1),
            image_embeds=image_embeds,
            score_shift=score_shift.expand(batch_size, -1),
            mask_loss=mask_loss,
            dice_loss=dice,
        )

    @torch.no_grad()
    def sliding_window_inference(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        output_size: tuple[int, int] | list[tuple[int, int]] | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        class_embeds: torch.Tensor | None = None,
        seen_class_mask: torch.Tensor | None = None,
        crop_size: int | None = None,
        stride: int | None = None,
        window_batch_size: int | None = None,
        output: str = "scores",
    ) -> torch.Tensor | list[torch.Tensor] | list[ClassMap]:
        """
        Calibrated class scores, or the class map, for images of any size, as the original's test-time sliding
        window computes them: each window's logits are upsampled to `image_size`, turned into scores (sigmoid minus
        the seen-class shift) and resized to the window; the scores of overlapping windows are averaged (in float32,
        whatever the model's dtype) and the result is resized bilinearly to the output size. The windows of all
        images go through the model together.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`, or a list of
                `(num_channels, height, width)` tensors of different sizes).
            output_size (`tuple[int, int]` or a list of them, *optional*): `(height, width)` of the result, for
                every image or one per image; each input's own size by default.
            input_ids, attention_mask, class_embeds, seen_class_mask: the classes, as in `forward`.
            crop_size (`int`, *optional*): window size, `config.slide_crop_size` by default.
            stride (`int`, *optional*): window stride, `config.slide_stride` by default; at most `crop_size`.
            window_batch_size (`int`, *optional*): how many windows go through the model at once; all by default.
            output (`str`, *optional*, defaults to `"scores"`): `"scores"` for every class's scores;
                `"segmentation"` for the class map and the winning scores only, made a few classes at a time, so
                that memory does not grow with the number of classes times the output's pixels.

        Returns:
            With `output="scores"`: for a tensor input, `torch.FloatTensor` of shape
            `(batch_size, num_classes, *output_size)`; for a list, one `(num_classes, height, width)` tensor per
            image. With `output="segmentation"`: one [`ClassMap`] per image, with `segmentation`
            (`torch.LongTensor` of shape `(height, width)`: each pixel's best class, as `argmax` over the scores
            takes it) and `scores` (`torch.FloatTensor` of shape `(height, width)`: that class's score).
        """
        images = list(pixel_values)
        for image in images:
            self.check_pixel_values(image[None] if image.dim() == 3 else image)
        crop_size = crop_size if crop_size is not None else self.config.slide_crop_size
        stride = stride if stride is not None else self.config.slide_stride
        check_window(crop_size, stride, self.config.vision_config.patch_size)
        class_embeds, seen_class_mask = self.resolve_class_embeds(
            input_ids, attention_mask, class_embeds, seen_class_mask
        )
        score_shift = seen_score_shift(seen_class_mask, self.config.setting, self.config.seen_score_shift)

        def window_logits(crops: torch.Tensor) -> torch.Tensor:
            return self(pixel_values=crops, class_embeds=class_embeds).logits

        return sliding_window_results(
            pixel_values,
            window_logits,
            score_shift,
            output_size,
            crop_size,
            stride,
            self.config.vision_config.image_size,
            window_batch_size,
            output,
        )


# Saved weights keep the layout of earlier releases (and of every published checkpoint): the decode head's
# parameters are stored at the top level.
register_checkpoint_conversion_mapping(
    CascadeClipForZeroShotSegmentation.__name__,
    [
        WeightRenaming(source_patterns=r"^stage_weights\.", target_patterns="decode_head.aggregation.stage_weights."),
        WeightRenaming(source_patterns=r"^decoders\.", target_patterns="decode_head.decoders."),
    ],
    overwrite=True,
)


__all__ = ["CascadeClipForZeroShotSegmentation", "CascadeClipPreTrainedModel", "CascadeClipSegmentationOutput"]
