"""Cascade-CLIP model configuration."""

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig
from transformers.pipelines import PIPELINE_REGISTRY

from .labels import IGNORE_INDEX
from .vocabulary import DEFAULT_TEMPLATES, check_class_names, check_templates, seen_class_names


SETTINGS = ("inductive", "transductive")
# The original taps layers 5-10 of ViT-B/16's 12 layers, in two stages of three.
ORIGINAL_STAGES = [[5, 6, 7], [8, 9, 10]]
ORIGINAL_VISION_LAYERS = 12


def pipelines_to_load_from_the_model(custom_pipelines: dict) -> dict:
    """
    The entries of a saved `config.custom_pipelines` whose code transformers' `pipeline()` must load from the model
    folder: those for which this process has not registered a pipeline class of the same name for the task.

    A saved model names its pipeline there for machines without this package (see
    `CascadeClipForZeroShotSegmentation.save_pretrained`). Where the package is imported, its pipeline is registered
    with transformers, and a kept entry would make `pipeline()` ignore it: refuse without `trust_remote_code`, and
    with it look for a code file that the shipped demo model does not have.
    """
    kept = {}
    for task, entry in custom_pipelines.items():
        registered = PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl")
        if getattr(registered, "__name__", None) != str(entry.get("impl", "")).rsplit(".", 1)[-1]:
            kept[task] = entry
    return kept


@strict
class CascadeClipConfig(PreTrainedConfig):
    r"""
    Configuration of [`CascadeClipForZeroShotSegmentation`]: a CLIP vision and text tower (transformers' own CLIP
    configurations) plus the Cascade-CLIP parts: deep visual prompts, tapped intermediate layers grouped into cascade
    stages, and one text-queried decoder per stage.

    The defaults describe the COCO-Stuff preset of the original release (ViT-B/16 at 512x512, 50 prompt tokens in all
    12 layers, layers 5-10 tapped in two stages). Benchmark presets are built by [`CascadeClipConfig.from_preset`].

    Args:
        vision_config (`dict` or `CLIPVisionConfig`, *optional*):
            The CLIP vision tower. `image_size` sets the position-embedding grid the model is trained at.
        text_config (`dict` or `CLIPTextConfig`, *optional*):
            The CLIP text tower that turns class names into class embeddings.
        projection_dim (`int`, *optional*):
            The joint image-text dimension. It is also the width of the decoders. Defaults to the vision tower's
            `projection_dim`; the text tower's must be the same.
        num_prompt_tokens (`int`, *optional*, defaults to 50):
            Number of learned prompt tokens inserted after the CLS token.
        num_prompt_layers (`int`, *optional*):
            How many encoder layers, counted from the first, get their own set of prompt tokens. Layers after these
            run without prompt tokens. Defaults to every layer of the vision tower, as the original prompts them.
        prompt_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the projected prompt tokens.
        vision_drop_path_rate (`float`, *optional*, defaults to 0.1):
            Stochastic depth on the vision tower's residual branches during training, rising linearly from 0 at the
            first layer to this rate at the last, as the original trains (its CLIP tower is frozen but in training
            mode). No effect at inference.
        prompt_layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the LayerNorm applied to every tapped layer and to the final layer.
        cascade_stages (`list[list[int]]`, *optional*):
            0-based indices of the tapped encoder layers, grouped into stages. Each stage's layers are fused with
            learned Gaussian-initialised weights and decoded by a decoder of its own; the final layer is one more
            stage. `[]` leaves only the final layer's decoder (the single-decoder baseline the paper compares with).
            Defaults to the original's `[[5, 6, 7], [8, 9, 10]]` for a 12-layer vision tower; other depths must
            name their stages.
        decoder_num_layers (`int`, *optional*, defaults to 3):
            Layers per decoder.
        decoder_num_attention_heads (`int`, *optional*, defaults to 8):
            Heads of the decoders' cross-attention.
        decoder_intermediate_size (`int`, *optional*, defaults to 2048):
            Width of the decoders' feed-forward layers.
        decoder_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the decoders' residual branches and feed-forward activations.
        decoder_attention_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the decoders' attention probabilities.
        decoder_layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the decoders' LayerNorms.
        seen_class_ids (`list[int]`, *optional*):
            Ids (keys of `id2label`) of the classes seen in training. Their scores are lowered by `seen_score_shift`
            for inductive models. `None` means every class of the vocabulary was seen.
        setting (`str`, *optional*, defaults to `"inductive"`):
            `"inductive"` (unseen classes' pixels ignored in training) or `"transductive"` (unseen pixels
            pseudo-labelled). Only inductive models shift the scores of seen classes.
        seen_score_shift (`float`, *optional*, defaults to 0.1):
            Subtracted from the sigmoid scores of seen classes by inductive models.
        templates (`list[str]`, *optional*):
            Prompt templates (with one `{}` for the class name) whose averaged text embeddings describe a class.
        focal_loss_weight (`float`, *optional*, defaults to 100.0):
            Weight of the sigmoid focal loss.
        dice_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the dice loss.
        focal_alpha (`float`, *optional*, defaults to 0.25):
            Alpha of the sigmoid focal loss.
        focal_gamma (`float`, *optional*, defaults to 2.0):
            Gamma of the sigmoid focal loss.
        ignore_index (`int`, *optional*, defaults to 255):
            Label value of pixels that carry no class.
        slide_crop_size (`int`, *optional*, defaults to 512):
            Window size of sliding-window inference.
        slide_stride (`int`, *optional*, defaults to 426):
            Window stride of sliding-window inference.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation of the decoders' linear layers.
        toy_world (`bool`, *optional*, defaults to `False`):
            Whether the model knows only the toy world of `cascade_clip_hf.toy_world` (the demo model shipped in the
            package): it cannot segment photos, and building it logs a notice saying so, once per process.

    Example:

    ```python
    >>> from cascade_clip_hf import CascadeClipConfig, CascadeClipForZeroShotSegmentation

    >>> config = CascadeClipConfig.from_preset("pascal-voc-2012", "inductive")
    >>> model = CascadeClipForZeroShotSegmentation(config)
    ```"""

    model_type = "cascade_clip"
    sub_configs_defaults = {"vision_config": CLIPVisionConfig, "text_config": CLIPTextConfig}

    vision_config: dict | CLIPVisionConfig | None = None
    text_config: dict | CLIPTextConfig | None = None
    projection_dim: int | None = None
    num_prompt_tokens: int = 50
    num_prompt_layers: int | None = None
    prompt_dropout: float | int = 0.1
    vision_drop_path_rate: float | int = 0.1
    prompt_layer_norm_eps: float = 1e-6
    cascade_stages: list[list[int]] | tuple | None = None
    decoder_num_layers: int = 3
    decoder_num_attention_heads: int = 8
    decoder_intermediate_size: int = 2048
    decoder_dropout: float | int = 0.1
    decoder_attention_dropout: float | int = 0.1
    decoder_layer_norm_eps: float = 1e-5
    seen_class_ids: list[int] | tuple | None = None
    setting: str = "inductive"
    seen_score_shift: float | int = 0.1
    templates: list[str] | tuple | None = None
    focal_loss_weight: float | int = 100.0
    dice_loss_weight: float | int = 1.0
    focal_alpha: float | int = 0.25
    focal_gamma: float | int = 2.0
    ignore_index: int = IGNORE_INDEX
    slide_crop_size: int = 512
    slide_stride: int = 426
    initializer_range: float = 0.02
    toy_world: bool = False

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = {"image_size": 512, "patch_size": 16}
        if self.projection_dim is None:
            vision_projection_dim = (
                self.vision_config.get("projection_dim", 512)
                if isinstance(self.vision_config, dict)
                else self.vision_config.projection_dim
            )
            self.projection_dim = vision_projection_dim
        self.templates = list(self.templates or DEFAULT_TEMPLATES)
        if self.seen_class_ids is not None:
            self.seen_class_ids = [int(class_id) for class_id in self.seen_class_ids]
        # A Cascade-CLIP model has no vocabulary unless one is given: do not invent LABEL_0/LABEL_1.
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = {}
        super().__post_init__(**kwargs)
        self.label2id = {name: class_id for class_id, name in self.id2label.items()}
        num_layers = self.vision_config.num_hidden_layers
        if self.num_prompt_layers is None:
            self.num_prompt_layers = num_layers
        if self.cascade_stages is None:
            if num_layers != ORIGINAL_VISION_LAYERS:
                raise ValueError(
                    f"The default cascade stages {ORIGINAL_STAGES} are the original's for 12 vision layers, not this "
                    f"tower's {num_layers}: set cascade_stages to layers in 0..{num_layers - 2}, e.g. "
                    f"{[[num_layers - 2]] if num_layers > 1 else []}, or [] for a single decoder on the last layer."
                )
            self.cascade_stages = ORIGINAL_STAGES
        self.cascade_stages = [list(stage) for stage in self.cascade_stages]
        if getattr(self, "custom_pipelines", None):
            self.custom_pipelines = pipelines_to_load_from_the_model(self.custom_pipelines)

    @property
    def extract_layers(self) -> list[int]:
        """The tapped encoder layers, stage after stage."""
        return [layer for stage in self.cascade_stages for layer in stage]

    @property
    def num_decoders(self) -> int:
        """One decoder per cascade stage plus one for the final layer."""
        return len(self.cascade_stages) + 1

    @property
    def class_names(self) -> list[str]:
        """The default vocabulary, in id order."""
        return [self.id2label[class_id] for class_id in sorted(self.id2label)]

    @property
    def seen_class_names(self) -> list[str]:
        """The classes of the default vocabulary seen in training (all of them when `seen_class_ids` is `None`)."""
        return seen_class_names(self.class_names, self.seen_class_ids)

    @classmethod
    def from_preset(cls, benchmark: str, setting: str = "inductive", **overrides) -> "CascadeClipConfig":
        """
        The configuration the original release trains on one benchmark: its class names, seen classes, prompt-token
        count, tapped layers, templates and sliding window, on a ViT-B/16 at 512x512.

        Args:
            benchmark (`str`): `"coco-stuff-164k"`, `"pascal-voc-2012"` or `"pascal-context-59"`.
            setting (`str`): `"inductive"` or `"transductive"`.
            overrides: any configuration argument, applied last.
        """
        from .presets import preset_config_kwargs

        return cls(**{**preset_config_kwargs(benchmark, setting), **overrides})

    def validate_cascade(self):
        """Checks that the towers, prompts, stages and decoders fit together."""
        num_layers = self.vision_config.num_hidden_layers
        if self.text_config.projection_dim != self.projection_dim:
            raise ValueError(
                f"The text tower projects to {self.text_config.projection_dim} dimensions but the model's joint "
                f"dimension is {self.projection_dim}: set text_config.projection_dim={self.projection_dim}."
            )
        if self.vision_config.projection_dim != self.projection_dim:
            raise ValueError(
                f"The vision tower projects to {self.vision_config.projection_dim} dimensions but the model's joint "
                f"dimension is {self.projection_dim}: set vision_config.projection_dim={self.projection_dim}."
            )
        if not 1 <= self.num_prompt_layers <= num_layers:
            raise ValueError(f"num_prompt_layers must lie in [1, {num_layers}], got {self.num_prompt_layers}.")
        if not 0 <= self.vision_drop_path_rate < 1:
            raise ValueError(f"vision_drop_path_rate must lie in [0, 1), got {self.vision_drop_path_rate}.")
        if self.num_prompt_tokens < 0:
            raise ValueError(f"num_prompt_tokens must not be negative, got {self.num_prompt_tokens}.")
        if any(len(stage) == 0 for stage in self.cascade_stages):
            raise ValueError(f"cascade_stages must be non-empty lists of layer indices, got {self.cascade_stages}.")
        layers = self.extract_layers
        if len(set(layers)) != len(layers) or any(not 0 <= layer < num_layers - 1 for layer in layers):
            raise ValueError(
                f"cascade_stages must name distinct layers in [0, {num_layers - 2}] (the last layer, "
                f"{num_layers - 1}, is always its own stage), got {self.cascade_stages}."
            )
        heads = {
            "vision_config.num_attention_heads": self.vision_config.num_attention_heads,
            "text_config.num_attention_heads": self.text_config.num_attention_heads,
            "decoder_num_attention_heads": self.decoder_num_attention_heads,
        }
        for name, count in heads.items():
            if count < 1:
                raise ValueError(f"{name} must be at least 1, got {count}.")
        if self.projection_dim % self.decoder_num_attention_heads != 0:
            raise ValueError(
                f"The decoders' width ({self.projection_dim}) is not a multiple of decoder_num_attention_heads "
                f"({self.decoder_num_attention_heads})."
            )
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {self.setting!r}.")
        if self.id2label:
            check_class_names(self.class_names, "id2label")
        if self.seen_class_ids is not None:
            unknown = sorted(set(self.seen_class_ids) - set(self.id2label))
            if unknown:
                raise ValueError(f"seen_class_ids {unknown} are not ids of id2label (0..{len(self.id2label) - 1}).")
        check_templates(self.templates)
        if not 0 < self.slide_stride <= self.slide_crop_size:
            raise ValueError(
                f"slide_stride must lie in [1, slide_crop_size], got {self.slide_stride} with slide_crop_size "
                f"{self.slide_crop_size}: a larger stride leaves pixels between the windows unsegmented."
            )


__all__ = ["CascadeClipConfig"]
