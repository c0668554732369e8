"""Benchmark evaluation as the original runs it: test-time resize, sliding window, metrics over the whole split."""

import logging
import math
import statistics
from pathlib import Path

import evaluate
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import SegmentationData
from .image_processing_cascade_clip import CascadeClipImageProcessor, ImageInputError
from .labels import IGNORE_INDEX
from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation
from .vocabulary import embed_class_names


logger = logging.getLogger(__name__)

METRIC_PATH = Path(__file__).parent / "metrics" / "zero_shot_miou"
# The headline metrics of a `results.json` record (percent), by key, with the names tables and plots give them.
HEADLINE_METRICS = {
    "miou": "mIoU",
    "miou_seen": "mIoU(seen)",
    "miou_unseen": "mIoU(unseen)",
    "hiou": "hIoU",
    "pixel_accuracy": "pixel acc.",
}


def load_metric(config_name: str = "maps"):
    """The shipped `evaluate` module (`"maps"`: prediction and reference maps; `"areas"`: per-image class areas)."""
    return evaluate.load(str(METRIC_PATH), config_name)


class EvaluationImages(Dataset):
    """Each image prepared at the test scale, with its label map at the original size; unreadable ones are None."""

    def __init__(self, data: SegmentationData, image_processor: CascadeClipImageProcessor):
        self.data = data
        self.image_processor = image_processor

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        try:
            image, labels = self.data.load(index)
        except ImageInputError as error:
            logger.warning(f"Leaving out an unreadable evaluation sample: {error}")
            return None
        pixel_values = self.image_processor(image, return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixel_values, "labels": torch.from_numpy(labels)}


def keep_as_list(batch: list) -> list:
    return batch


def class_embeddings_for(
    model: CascadeClipForZeroShotSegmentation, processor, class_names: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The class embeddings and seen-class mask to evaluate `class_names` with. A model whose vocabulary is exactly
    these classes uses its stored embeddings and seen classes. Any other class list (cross-dataset evaluation) is
    embedded with the text tower and the processor's templates, and every class counts as seen, as the original's
    cross-dataset configurations set it: the seen-class shift is then the same for all classes.
    """
    if model.config.class_names == list(class_names):
        return model.class_embeddings, model.default_seen_class_mask()
    class_embeds = embed_class_names(model, processor.tokenizer, class_names, processor.templates)
    return class_embeds, torch.ones(len(class_names), dtype=torch.bool, device=class_embeds.device)


@torch.no_grad()
def evaluate_split(
    accelerator,
    model: CascadeClipForZeroShotSegmentation,
    processor,
    data: SegmentationData,
    batch_size: int = 1,
    window_batch_size: int | None = None,
    num_workers: int = 0,
    max_samples: int | None = None,
) -> dict:
    """
    Segments every image of `data` with the model's sliding window and computes the zero-shot metrics, under
    `accelerate` with any number of processes (per-image class areas are gathered with `gather_for_metrics`).

    Returns:
        The metric module's results plus `num_images` and `num_unreadable`.
    """
    class_names = data.class_names
    model.eval()
    class_embeds, seen_class_mask = class_embeddings_for(model, processor, class_names)

    images = EvaluationImages(data, processor.image_processor)
    if max_samples is not None:
        images = torch.utils.data.Subset(images, range(min(max_samples, len(images))))
    loader = accelerator.prepare_data_loader(
        DataLoader(images, batch_size=batch_size, collate_fn=keep_as_list, num_workers=num_workers)
    )
    metric = load_metric("areas")
    num_classes = len(class_names)
    num_unreadable = 0
    progress = tqdm(
        total=math.ceil(len(images) / batch_size / accelerator.num_processes),
        desc="Evaluating",
        disable=not accelerator.is_local_main_process,
    )
    for batch in loader:
        readable = [sample for sample in batch if sample is not None]
        num_unreadable += len(batch) - len(readable)
        areas = np.zeros((len(batch), 3, num_classes), dtype=np.int64)
        if readable:
            class_maps = model.sliding_window_inference(
                [sample["pixel_values"].to(accelerator.device) for sample in readable],
                output_size=[tuple(sample["labels"].shape) for sample in readable],
                class_embeds=class_embeds,
                seen_class_mask=seen_class_mask,
                window_batch_size=window_batch_size,
                output="segmentation",
            )
            readable_rows = [row for row, sample in enumerate(batch) if sample is not None]
            for row, sample, class_map in zip(readable_rows, readable, class_maps, strict=True):
                prediction = class_map.segmentation.cpu().numpy()
                areas[row] = metric.class_areas(prediction, sample["labels"].numpy(), num_classes, IGNORE_INDEX)
        gathered = accelerator.gather_for_metrics(torch.from_numpy(areas).to(accelerator.device))
        if accelerator.is_main_process:
            gathered = gathered.cpu().numpy()
            metric.add_batch(area_intersect=gathered[:, 0], area_prediction=gathered[:, 1], area_label=gathered[:, 2])
        progress.update(1)
    progress.close()
    num_unreadable = int(accelerator.reduce(torch.tensor(num_unreadable, device=accelerator.device), "sum"))
    if not accelerator.is_main_process:
        return {}
    results = metric.compute(num_labels=num_classes, seen_class_ids=data.seen_class_ids)
    results.update({"num_images": len(images) - num_unreadable, "num_unreadable": num_unreadable})
    return results


def as_percent(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(100 * value, 2)


def results_record(metrics: dict, class_names: list[str], **metadata) -> dict:
    """The `results.json` record: metrics in percent, as the paper reports them, and what was evaluated."""
    return {
        "miou": as_percent(metrics["mean_iou"]),
        "miou_seen": as_percent(metrics["mean_iou_seen"]),
        "miou_unseen": as_percent(metrics["mean_iou_unseen"]),
        "hiou": as_percent(metrics["harmonic_iou"]),
        "pixel_accuracy": as_percent(metrics["pixel_accuracy"]),
        "per_class_iou": {
            name: as_percent(iou) for name, iou in zip(class_names, metrics["per_category_iou"], strict=True)
        },
        "num_images": metrics["num_images"],
        "num_unreadable": metrics["num_unreadable"],
        "units": "percent",
        **metadata,
    }


def markdown_cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def markdown_summary(record: dict) -> str:
    """A markdown table of the headline metrics."""
    cells = [markdown_cell(record[key]) for key in HEADLINE_METRICS]
    return markdown_table([*HEADLINE_METRICS.values(), "images"], [[*cells, str(record["num_images"])]])


def aggregate_metrics(records: list[dict]) -> dict[str, tuple[float | None, float | None, int]]:
    """
    The mean and sample standard deviation (divided by n - 1) of each headline metric over several runs'
    `results.json` records, with the number n of runs that have it (a run without unseen classes has no hIoU).
    The mean is None without any value, the deviation without two.
    """
    aggregated = {}
    for key in HEADLINE_METRICS:
        values = [record[key] for record in records if record.get(key) is not None]
        mean = statistics.mean(values) if values else None
        deviation = statistics.stdev(values) if len(values) > 1 else None
        aggregated[key] = (mean, deviation, len(values))
    return aggregated


def aggregate_markdown(records: dict[str, dict]) -> str:
    """A markdown table of the headline metrics of several runs' records (by run name), one row each, then their
    mean and sample standard deviation (see `aggregate_metrics`)."""
    aggregated = aggregate_metrics(list(records.values()))
    rows = [[name, *(markdown_cell(record.get(key)) for key in HEADLINE_METRICS)] for name, record in records.items()]
    rows.append(["mean", *(markdown_cell(aggregated[key][0]) for key in HEADLINE_METRICS)])
    rows.append(["std. dev. (n - 1)", *(markdown_cell(aggregated[key][1]) for key in HEADLINE_METRICS)])
    return markdown_table(["run", *HEADLINE_METRICS.values()], rows)
