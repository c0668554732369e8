"""Model cards: YAML metadata (with a model-index of evaluation results) and prose, on huggingface_hub's ModelCard."""

import json
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.utils import validate_repo_id
from yaml import YAMLError

from .atomic import output_files
from .configuration_cascade_clip import CascadeClipConfig
from .errors import counted
from .hub import download_from_hub
from .presets import BENCHMARKS, load_benchmarks


TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
BASE_MODEL = "openai/clip-vit-base-patch16"
# The image transformers' own documentation examples use (COCO val2017 #39769: two cats on a couch).
WIDGET_EXAMPLES = [{"src": "http://images.cocodataset.org/val2017/000000039769.jpg", "example_title": "Cats"}]
DATASET_NAMES = {
    "coco-stuff-164k": "COCO-Stuff 164k",
    "pascal-voc-2012": "PASCAL VOC 2012",
    "pascal-context-59": "PASCAL Context 59",
}
# A card's `license: other` names the original release's terms; models trained here from CLIP default to the code's.
ORIGINAL_LICENSE, ORIGINAL_LICENSE_NAME = "other", "cascade-clip-non-commercial"
TRAINED_FROM_CLIP_LICENSE = "apache-2.0"
ORIGINAL_WEIGHTS_LICENSE = (
    "The original Cascade-CLIP release states that its code and weights are for non-commercial use only. Weights "
    "converted from that release, and models trained with its recipe from its checkpoints, carry that restriction. "
    "The cascade-clip-hf code itself is Apache-2.0."
)
CLIP_LIMITATIONS = """\
- Zero-shot quality depends on how close the new class names are to what CLIP learned; rare, ambiguous or very
  fine-grained names segment worse, and the model tends to prefer seen classes where they compete.
- The `image-segmentation` pipeline (what the Hub widget runs) segments into the default vocabulary with one
  forward pass at the processor's resolution; the `zero-shot-image-segmentation` pipeline and
  `sliding_window_inference` follow the original's sliding window, which the reported numbers use.
- Inference at 512x512 windows is slow on CPU (about 2 s per window for ViT-B/16 on two cores).
- The model inherits the biases of CLIP's web-scale pretraining data."""
# The licence ids the Hub's model cards take (huggingface.co/docs/hub/repositories-licenses), which huggingface_hub
# does not list; `other` with a `license_name` names terms of one's own.
HUB_LICENSES = (
    "apache-2.0", "mit", "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause",
    "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0",
    "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "intel-research", "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by", "odbl", "osl-3.0",
    "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "unknown", "other",
)  # fmt: skip
RESULT_METRICS = (("miou", "mIoU"), ("miou_seen", "mIoU (seen)"), ("miou_unseen", "mIoU (unseen)"), ("hiou", "hIoU"))


def eval_results(results: dict, dataset: str, split: str) -> list[EvalResult]:
    """model-index entries for a `results.json` record (values in percent)."""
    dataset_name = DATASET_NAMES.get(dataset, dataset)
    return [
        EvalResult(
            task_type="image-segmentation",
            task_name="Zero-shot semantic segmentation",
            dataset_type=dataset,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=key,
            metric_name=name,
            metric_value=results[key],
        )
        for key, name in RESULT_METRICS
        if results.get(key) is not None
    ]


def results_markdown(
    results: dict | None, dataset: str | None, setting: str, best_during_training: dict | None = None
) -> str:
    """
    Our measured results, the best evaluation during training (a `best_model.json` record: `step` and `metrics`,
    in percent) and, for a paper benchmark, the original authors' reported numbers beside them.
    """
    rows = ["| source | mIoU(seen) | mIoU(unseen) | hIoU | mIoU |", "| --- | --- | --- | --- | --- |"]

    def cell(value):
        return "n/a" if value is None else f"{value:.1f}"

    def measured(source: str, record: dict) -> str:
        return (
            f"| {source} | {cell(record.get('miou_seen'))} | {cell(record.get('miou_unseen'))} | "
            f"{cell(record.get('hiou'))} | {cell(record.get('miou'))} |"
        )

    if results:
        rows.append(measured(f"measured with this checkpoint ({results.get('num_images', '?')} images)", results))
    if best_during_training and best_during_training.get("step") is not None:
        step = best_during_training["step"]
        rows.append(
            measured(f"best evaluation during training: step {step} (`best/`)", best_during_training["metrics"])
        )
    paper = load_benchmarks()["_common"]["paper_results_readme_average"].get(dataset or "", {}).get(setting)
    if paper:
        seen, unseen = paper["miou_seen"], paper["miou_unseen"]
        rows.append(
            f"| reported by the original authors (not measured here) | {cell(seen)} | {cell(unseen)} | "
            f"{cell(2 * seen * unseen / (seen + unseen))} | n/a |"
        )
    if len(rows) == 2:
        return "No evaluation results yet."
    return "\n".join(rows)


def training_run_recipe(
    *,
    crop_size: int,
    train_scale: list[int],
    scale_ratio_range: list[float],
    photometric_distortion: bool,
    learning_rate: float,
    weight_decay: float,
    no_decay_on_norms: bool,
    warmup_steps: int,
    steps: int,
    batch: str,
    seed: int,
    evaluated_every: int | None = None,
) -> dict[str, str]:
    """What a training run of `examples/train_cascade_clip.py` ran with, as the `training` of `build_model_card`:
    its augmentation, optimiser and schedule in the card's words (`batch`: e.g. "4 x 2 x 1 images")."""
    long_side, short_side = train_scale
    norms = "no weight decay on norm layers" if no_decay_on_norms else "weight decay on norm layers too"
    recipe = {
        "Augmentation": f"resize to scale ({long_side},{short_side}) with ratio {scale_ratio_range[0]}-"
        f"{scale_ratio_range[1]} keeping aspect; random crop {crop_size}; horizontal flip p=0.5; "
        f"{'photometric distortion' if photometric_distortion else 'no photometric distortion'}; normalise; "
        f"pad to {crop_size} (image 0, label 255)",
        "Optimiser": f"AdamW lr {learning_rate:g} weight_decay {weight_decay:g}; lr multiplier 10 for the prompts "
        f"and the head; text tower frozen; {norms}",
        "Schedule": f"poly power 0.9 min_lr 1e-6, linear warmup {counted(warmup_steps, 'step')} from ratio 1e-6; "
        f"{counted(steps, 'step')} of {batch} (per process x processes x accumulation); seed {seed}",
    }
    if evaluated_every:
        recipe["Evaluation"] = f"every {counted(evaluated_every, 'step')} and after the last"
    return recipe


def training_markdown(config: CascadeClipConfig, dataset: str | None, training: dict | None) -> str:
    """The recipe: the training run's own (`training_run_recipe`) when there is one, else the original's."""
    lines = []
    if dataset in BENCHMARKS:
        # The model's own split: a run may have chosen other seen classes than the benchmark's.
        num_seen = config.num_labels if config.seen_class_ids is None else len(config.seen_class_ids)
        lines.append(
            f"Trained on the {counted(num_seen, 'seen class', 'seen classes')} of "
            f"{DATASET_NAMES[dataset]} ({config.setting}); the "
            f"{counted(config.num_labels - num_seen, 'unseen class', 'unseen classes')} were never labelled."
        )
    recipe = load_benchmarks()["_common"]
    run = training or {
        "Augmentation": recipe["train_augmentation"],
        "Optimiser": recipe["optimizer"],
        "Schedule": recipe["schedule"],
    }
    lines += [f"- {key}: {value}." for key, value in run.items()]
    lines += [
        f"- Loss: {recipe['loss']}.",
        f"- Prompts: {counted(config.num_prompt_tokens, 'token')} in {counted(config.num_prompt_layers, 'layer')}; "
        "cascade stages "
        f"{config.cascade_stages} plus the final layer.",
    ]
    return "\n".join(lines)


def training_run_markdown(best_during_training: dict | None, curves: str | None) -> str:
    """The best step of a run that evaluated during training (a `best_model.json` record) and its curves (a PNG's
    path relative to the card)."""
    parts = []
    if best_during_training and best_during_training.get("step") is not None:
        parts.append(
            f"Evaluated during training; the best evaluation by `{best_during_training['metric']}` came after step "
            f"{best_during_training['step']} (its numbers are under Results). That model is kept in `best/`; the "
            "model here is the last step's."
        )
    if curves:
        parts.append(f"![Loss, learning rate and evaluation metrics over training steps]({curves})")
    return "\n\n".join(parts)


def build_model_card(
    config: CascadeClipConfig,
    repo_id: str,
    dataset: str | None = None,
    results: dict | None = None,
    split: str = "val",
    training: dict | None = None,
    summary: str | None = None,
    license_note: str = ORIGINAL_WEIGHTS_LICENSE,
    license: str = ORIGINAL_LICENSE,
    base_model: str | None = BASE_MODEL,
    origin: str | None = None,
    widget: list[dict] | None = WIDGET_EXAMPLES,
    example_image: str = "photo.jpg",
    example_folder: str = "photos/",
    example_labels: tuple[str, ...] = ("cat", "grass", "sky"),
    limitations: str = CLIP_LIMITATIONS,
    recipe: str | None = None,
    best_during_training: dict | None = None,
    curves: str | None = None,
) -> ModelCard:
    """
    A model card for a Cascade-CLIP checkpoint, with `results` (a `results.json` record) in its model-index.
    The defaults describe a checkpoint of the original recipe (CLIP ViT-B/16, the original's non-commercial
    weights, photos); a model of another kind passes its own license, base model, usage example, limitations and
    `recipe` (markdown for the Training section, instead of the original recipe's). `origin`: a sentence opening
    the Training section, naming what the model was trained from (see `training_provenance`).
    `best_during_training`: the `best_model.json` record (`metric`, `step`, `metrics`) of a run that evaluated
    during training; `curves`: the path of its training curves' PNG relative to the card, embedded in it.
    """
    num_seen = len(config.seen_class_ids) if config.seen_class_ids is not None else config.num_labels
    card_data = ModelCardData(
        license=license,
        license_name=ORIGINAL_LICENSE_NAME if license == ORIGINAL_LICENSE else None,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        base_model=base_model,
        datasets=[dataset] if dataset else None,
        metrics=["mean_iou"],
        tags=["cascade-clip", "zero-shot-semantic-segmentation", "clip", "image-segmentation"],
        model_name=repo_id,
        eval_results=eval_results(results, dataset, split) if results and dataset else None,
        widget=widget,
    )
    dataset_name = DATASET_NAMES.get(dataset, dataset)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        title=repo_id.split("/")[-1],
        summary=summary
        or f"Cascade-CLIP for zero-shot semantic segmentation{f' on {dataset_name}' if dataset else ''}.",
        repo_id=repo_id,
        dataset_name=dataset_name,
        num_classes=config.num_labels,
        num_seen=num_seen,
        num_unseen=config.num_labels - num_seen,
        setting=config.setting,
        seen_score_shift=config.seen_score_shift,
        training="\n\n".join(
            filter(
                None,
                [
                    origin,
                    recipe or training_markdown(config, dataset, training),
                    training_run_markdown(best_during_training, curves),
                ],
            )
        ),
        results=results_markdown(results, dataset, config.setting, best_during_training),
        license_note=license_note,
        example_image=example_image,
        example_folder=example_folder,
        example_labels=list(example_labels),
        example_labels_list=json.dumps(list(example_labels)),
        limitations=limitations.rstrip("\n"),
    )


def card_data_of(model_name_or_path: str) -> ModelCardData | None:
    """The metadata of a model's card: a local folder's README.md, or a Hub model's (None when there is none, or the
    Hub cannot be reached and the cache does not hold it)."""
    path = Path(model_name_or_path)
    try:
        card_file = path / "README.md" if path.is_dir() else download_from_hub(model_name_or_path, "README.md")[0]
        card = ModelCard.load(card_file)
    except (OSError, ValueError, EntryNotFoundError, YAMLError):
        return None
    return card.data


def hub_id_of_clip(clip_model: str) -> str | None:
    """
    The Hub id of the CLIP checkpoint `clip_model` names: itself, or for a local folder the id its `config.json`
    records as `_name_or_path` (transformers before 5 wrote it when saving a downloaded model); None otherwise.
    """
    if not Path(clip_model).is_dir():
        return clip_model
    try:
        name = json.loads((Path(clip_model) / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
        validate_repo_id(name)
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and not Path(name).exists() else None


def training_provenance(clip_model: str, init_from: str | None = None, license: str | None = None) -> dict:
    """
    What the card of a model trained here says it came from: the `base_model`, `license`, `license_note` and
    `origin` arguments of `build_model_card`.

    Args:
        clip_model: the CLIP checkpoint (Hub id or folder) a new model was built from.
        init_from: the Cascade-CLIP model (Hub id or folder) training continued from instead, if any.
        license: the licence the trainer gives the model (a Hub licence id; `other` means the original release's
            non-commercial terms). By default: the licence of `init_from`'s card, the original's terms when it has
            none (converted weights carry them), and Apache-2.0 for a model trained from CLIP.
    """
    if init_from:
        parent = card_data_of(init_from)
        base_model = init_from if not Path(init_from).is_dir() else parent and parent.base_model
        origin = f"Training continued from the Cascade-CLIP model `{init_from}`."
        license = license or (parent and parent.license) or ORIGINAL_LICENSE
        inherited = f"the licence of `{init_from}`, which it continues" if parent and parent.license else None
    else:
        base_model = hub_id_of_clip(clip_model)
        if base_model == clip_model:
            origin = f"Trained from the CLIP checkpoint [`{clip_model}`](https://huggingface.co/{clip_model})."
        else:
            origin = f"Trained from the CLIP checkpoint in the local folder `{clip_model}`" + (
                f", saved from `{base_model}`." if base_model else "."
            )
        license = license or TRAINED_FROM_CLIP_LICENSE
        inherited = None
    if license == ORIGINAL_LICENSE:
        note = ORIGINAL_WEIGHTS_LICENSE
    else:
        note = (
            f"{license}, {inherited or 'as stated by whoever trained it'}. The cascade-clip-hf code is Apache-2.0; "
            "the CLIP weights inside keep their own terms."
        )
    return {"base_model": base_model or None, "license": license, "license_note": note, "origin": origin}


def write_model_card(output_dir: str | os.PathLike, card: ModelCard, kind: str) -> Path:
    """
    `output_dir`/README.md; one this program did not write as an output of `kind` is refused (`OutputFolderError`).
    `kind`: `MODEL` when the card is part of a model folder, `MODEL_CARD` when it is written alone (see
    `cascade_clip_hf.atomic`).
    """
    with output_files(output_dir, kind) as staging:
        card.save(staging / "README.md")
    return Path(output_dir) / "README.md"
