"""The original training recipe: parameter groups, learning-rate schedule, setting-specific labels, checkpoints."""

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from .atomic import MODEL, OutputFolderError, output_files, publish_directory, read_record, record_staging
from .configuration_cascade_clip import SETTINGS
from .data import SegmentationData
from .image_processing_cascade_clip import ImageInputError
from .labels import HIDDEN_LABEL, IGNORE_INDEX, index_lookup
from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation


logger = logging.getLogger(__name__)

# How many following samples an unreadable one may be replaced by before giving up.
MAX_REPLACEMENTS = 100
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
TRAINING_STATE_FILE = "training_state.json"
# The best model by the chosen metric, and the record of its step and metrics inside it.
BEST_DIR, BEST_MODEL_FILE = "best", "best_model.json"


def parameter_groups(
    model: CascadeClipForZeroShotSegmentation,
    learning_rate: float,
    weight_decay: float,
    lr_multiplier: float = 10.0,
    no_decay_on_norms: bool = False,
) -> list[dict]:
    """
    AdamW groups as the original configures them: the trainable vision parameters (prompts) and the head at
    `lr_multiplier` times the base rate, the text tower not trained.

    The original's config also asks for no weight decay on norm layers, but mmcv applies only the first matching
    rule, longest key first, and `backbone`/`head` match before `norm`: its trainable norm layers do get weight
    decay. That is the default here; `no_decay_on_norms=True` follows the config's stated intent instead.
    """
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("text_encoder."):
            logger.warning(f"{name} is trainable, but the text tower trains at learning rate 0 as in the original.")
            continue
        is_norm = isinstance(model.get_submodule(name.rpartition(".")[0]), torch.nn.LayerNorm)
        (no_decay if no_decay_on_norms and is_norm else decay).append(parameter)
    groups = [{"params": decay, "lr": learning_rate * lr_multiplier, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "lr": learning_rate * lr_multiplier, "weight_decay": 0.0})
    if not decay and not no_decay:
        raise ValueError("The model has no trainable parameters.")
    return groups


def poly_schedule(
    optimizer: torch.optim.Optimizer,
    max_steps: int,
    warmup_steps: int = 1500,
    warmup_ratio: float = 1e-6,
    power: float = 0.9,
    min_lr: float = 1e-6,
) -> LambdaLR:
    """
    mmcv's iteration-based poly schedule with linear warm-up: at step `i` a group with initial rate `lr` runs at
    `(lr - min_lr) * (1 - i / max_steps) ** power + min_lr`, scaled during warm-up by
    `1 - (1 - i / warmup_steps) * (1 - warmup_ratio)`.
    """

    def factor_for(initial_lr: float):
        def factor(step: int) -> float:
            progress = min(step, max_steps) / max_steps
            regular = (initial_lr - min_lr) * (1 - progress) ** power + min_lr
            if step < warmup_steps:
                regular *= 1 - (1 - step / warmup_steps) * (1 - warmup_ratio)
            return regular / initial_lr

        return factor

    return LambdaLR(optimizer, [factor_for(group["lr"]) for group in optimizer.param_groups])


@dataclass
class TrainingVocabulary:
    """The classes a setting trains on and how dataset labels become training labels."""

    class_ids: list[int]
    label_lookup: torch.Tensor
    unseen_class_ids: list[int]

    def labels(self, dataset_labels: torch.Tensor) -> torch.Tensor:
        """Maps dataset class ids (and ignore) to indices into `class_ids`, ignore or `HIDDEN_LABEL`."""
        return self.label_lookup.to(dataset_labels.device)[dataset_labels]

    @property
    def seen_class_mask(self) -> torch.Tensor:
        """`(len(class_ids),)` booleans: which of the trained classes were seen (the rest get pseudo-labels)."""
        return torch.tensor([class_id not in self.unseen_class_ids for class_id in self.class_ids])


def training_vocabulary(num_classes: int, seen_class_ids: list[int] | None, setting: str) -> TrainingVocabulary:
    """
    Inductive: the vocabulary is the seen classes; pixels of unseen classes are ignored. Transductive: the
    vocabulary is every class; pixels of unseen classes are hidden, to be pseudo-labelled.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}.")
    seen = list(range(num_classes)) if seen_class_ids is None else sorted(seen_class_ids)
    unseen = [class_id for class_id in range(num_classes) if class_id not in set(seen)]
    lookup_size = max(num_classes, IGNORE_INDEX) + 1
    if setting == "inductive":
        lookup = torch.from_numpy(index_lookup(seen, lookup_size))
        return TrainingVocabulary(class_ids=seen, label_lookup=lookup, unseen_class_ids=[])
    lookup = torch.from_numpy(index_lookup(range(num_classes), lookup_size))
    lookup[unseen] = HIDDEN_LABEL
    return TrainingVocabulary(class_ids=list(range(num_classes)), label_lookup=lookup, unseen_class_ids=unseen)


@dataclass(frozen=True)
class DataPosition:
    """
    Where a run stands in its data: `batches` batches consumed, per process, of epoch `epoch`, whose data loader
    yields `batches_per_epoch` per process (`0 <= batches < batches_per_epoch`).
    """

    epoch: int
    batches: int
    batches_per_epoch: int

    def advance(self) -> "DataPosition":
        """The position one batch later: the next epoch's start after the epoch's last batch."""
        epoch, batches = divmod(self.batches + 1, self.batches_per_epoch)
        return DataPosition(self.epoch + epoch, batches, self.batches_per_epoch)

    @classmethod
    def after_steps(cls, steps: int, batches_per_epoch: int, accumulation: int) -> "DataPosition":
        """
        Where `steps` optimizer steps from the start leave a run that accumulates gradients over `accumulation`
        batches: Accelerate also steps at an epoch's last batch, on an incomplete accumulation, so an epoch takes
        `ceil(batches_per_epoch / accumulation)` steps.
        """
        steps_per_epoch = -(-batches_per_epoch // accumulation)
        epoch, steps_in_epoch = divmod(steps, steps_per_epoch)
        return cls(epoch, steps_in_epoch * accumulation, batches_per_epoch)


# The settings of a run that shape its result, recorded in each checkpoint: those a resumed run must keep to continue
# it exactly, and those it may change (a longer run, evaluations at other steps, the best model by another metric).
EXACT_RESUME_SETTINGS = (
    "dataset",
    "setting",
    "seen_class_ids",
    "seed",
    "train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "no_decay_on_norms",
    "crop_size",
    "train_scale",
    "scale_ratio_range",
)
ADJUSTABLE_SETTINGS = ("max_train_steps", "eval_steps", "metric_for_best_model")


def check_resumed_settings(checkpoint: Path, settings: dict) -> list[str]:
    """
    Compares a resumed run's `settings` (`EXACT_RESUME_SETTINGS` and `ADJUSTABLE_SETTINGS`, by option name, as
    JSON values) with those its checkpoint recorded; a checkpoint of an earlier version records none.

    Returns:
        One line per adjustable setting the resumed run changes, naming the old and new values.

    Raises:
        ValueError: naming the first exact-resume setting that changed, with its old and new values.
    """
    recorded = json.loads((checkpoint / TRAINING_STATE_FILE).read_text()).get("settings")
    if recorded is None:
        return []
    for name in EXACT_RESUME_SETTINGS:
        if name in recorded and recorded[name] != settings[name]:
            raise ValueError(
                f"{checkpoint} was saved by a run with --{name} {json.dumps(recorded[name])}, this one has "
                f"{json.dumps(settings[name])}: resuming would not continue that run; pass the same value, or start "
                "a new run in another --output_dir."
            )
    return [
        f"--{name} changed on resuming: {json.dumps(recorded[name])} -> {json.dumps(settings[name])}."
        for name in ADJUSTABLE_SETTINGS
        if name in recorded and recorded[name] != settings[name]
    ]


def checkpoint_dirs(output_dir: str | os.PathLike) -> dict[int, Path]:
    """Complete checkpoints under `output_dir`, by step. Partial saves (hidden `.checkpoint-*` folders) are not."""
    found = {}
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.fullmatch(path.name)
        if match and (path / TRAINING_STATE_FILE).is_file():
            found[int(match[1])] = path
    return found


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from: str) -> Path | None:
    """`"latest"`: the newest complete checkpoint in `output_dir` (None if there is none); else a path."""
    if resume_from == "latest":
        checkpoints = checkpoint_dirs(output_dir)
        return checkpoints[max(checkpoints)] if checkpoints else None
    path = Path(resume_from)
    if not (path / TRAINING_STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINING_STATE_FILE}).")
    return path


def read_training_state(checkpoint: Path, batches_per_epoch: int, accumulation: int) -> tuple[int, DataPosition]:
    """
    The optimizer steps a checkpoint was saved after and the data position to resume from, for a run whose data
    loader yields `batches_per_epoch` per process. A checkpoint that records no position (saved by an earlier
    version) gets the one its steps imply, exact if the run that saved it accumulated over `accumulation` batches
    and had as many batches per epoch.
    """
    state = json.loads((checkpoint / TRAINING_STATE_FILE).read_text())
    step = state["step"]
    if "batches" not in state:
        logger.warning(
            f"{checkpoint} records no data position (saved by an earlier version): deriving it from the step count, "
            "exact only if the batch size, number of processes and gradient accumulation are unchanged."
        )
        return step, DataPosition.after_steps(step, batches_per_epoch, accumulation)
    batches = state["batches"]
    if state["batches_per_epoch"] != batches_per_epoch:
        batches = batches * batches_per_epoch // state["batches_per_epoch"]
        logger.warning(
            f"{checkpoint} was saved by a run of {state['batches_per_epoch']} batches per epoch and process, this one "
            f"has {batches_per_epoch} (another batch size or number of processes): resuming at the same fraction of "
            f"epoch {state['epoch']}, batch {batches}, in a data order that differs from the uninterrupted run's."
        )
    return step, DataPosition(state["epoch"], batches, batches_per_epoch)


@dataclass
class BestModel:
    """
    The best evaluation during a run by `metric`, a key of `evaluation.HEADLINE_METRICS` (greater is better): its
    optimizer `step` and its headline `metrics` (percent), both None until an evaluation computes the metric.
    """

    metric: str
    step: int | None = None
    metrics: dict | None = None

    def improved_by(self, metrics: dict) -> bool:
        """Whether `metrics` beat the best so far; a metric that could not be computed (None) never does, a tie
        keeps the earlier step."""
        value = metrics.get(self.metric)
        return value is not None and (self.metrics is None or value > self.metrics[self.metric])


def read_best_model(checkpoint: Path, metric: str) -> BestModel:
    """The best evaluation up to a checkpoint, as its `training_state.json` records it; none if it records none
    or chose the best by another metric."""
    recorded = json.loads((checkpoint / TRAINING_STATE_FILE).read_text()).get("best")
    if recorded is None or recorded["metric"] != metric:
        return BestModel(metric)
    return BestModel(**recorded)


def check_saved_best_model(output_dir: str | os.PathLike, best: BestModel, checkpoint: Path) -> None:
    """
    Refuses to resume from `checkpoint` where `output_dir/best` is not the best model that checkpoint records
    (`best`): a run that went on past the checkpoint and evaluated later left its own best there, which the resumed
    run would keep and its card would misname.

    Raises:
        ValueError: one line naming both steps and what to do.
    """
    saved = saved_best_model(output_dir)
    if saved is None or (saved.metric == best.metric and saved.step == best.step):
        return
    recorded = f"step {best.step}" if best.step is not None else "no best model"
    raise ValueError(
        f"{Path(output_dir) / BEST_DIR} holds the best model of step {saved.step} by {saved.metric}, but "
        f"{checkpoint.name} records {recorded} by {best.metric}: it comes from a run past that checkpoint or by "
        f"another metric; move {BEST_DIR}/ away to resume from {checkpoint.name}, or resume from a later checkpoint."
    )


def saved_best_model(output_dir: str | os.PathLike) -> BestModel | None:
    """What `output_dir/best/best_model.json` records (see `save_best`), None without it."""
    path = Path(output_dir) / BEST_DIR / BEST_MODEL_FILE
    return BestModel(**json.loads(path.read_text())) if path.is_file() else None


def start_staging(output_dir: Path, name: str) -> Path:
    """
    An empty staging folder `output_dir/name` for a save of the main process, recorded before it exists: only a
    recorded staging folder is the program's to remove after a kill (`remove_partial_checkpoints`).

    Raises:
        `OutputFolderError`: if `output_dir` holds `name` and the program did not record it as its staging.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / name
    if os.path.lexists(staging) and name not in read_record(output_dir).staging:
        raise OutputFolderError(
            f"refusing to write into {output_dir}: it holds {name}, which cascade-clip did not write "
            f"(move {name} away)"
        )
    record_staging(output_dir, name)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def publish_staging(staging: Path, target: Path) -> None:
    """Renames a completely written staging folder of `start_staging` to `target` and forgets it as staging."""
    publish_directory(staging, target, kind=MODEL)
    record_staging(staging.parent, staging.name, add=False)


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    position: DataPosition,
    best: BestModel | None = None,
    settings: dict | None = None,
) -> Path:
    """
    `accelerator.save_state` into a hidden staging folder, with `training_state.json` recording the steps done, the
    data position to resume from, the `best` evaluation so far (if there was one) and the run's `settings` (see
    `check_resumed_settings`), then a rename to `checkpoint-{step}`: a crash or kill during the save leaves the
    previous checkpoints as they were.
    """
    output_dir = Path(output_dir)
    staging = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        start_staging(output_dir, staging.name)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        evaluated = best is not None and best.step is not None
        state = {
            "step": step,
            **asdict(position),
            **({"best": asdict(best)} if evaluated else {}),
            **({"settings": settings} if settings is not None else {}),
        }
        (staging / TRAINING_STATE_FILE).write_text(json.dumps(state, indent=2))
        publish_staging(staging, output_dir / f"checkpoint-{step}")
    accelerator.wait_for_everyone()
    return output_dir / f"checkpoint-{step}"


def write_model(accelerator, model, processor, folder: Path) -> None:
    """The unwrapped model and its processor, `save_pretrained` (safetensors) into `folder`."""
    accelerator.unwrap_model(model).save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def save_final(accelerator, model, processor, output_dir: str | os.PathLike) -> None:
    """
    The trained model and its processor (`save_pretrained`, safetensors) into `output_dir`, beside the checkpoints:
    written into a hidden staging folder, then each file renamed into place (see `cascade_clip_hf.atomic`).
    """
    if accelerator.is_main_process:
        with output_files(output_dir, MODEL) as staging:
            write_model(accelerator, model, processor, staging)
    accelerator.wait_for_everyone()


def save_best(accelerator, model, processor, output_dir: str | os.PathLike, best: BestModel) -> Path:
    """
    The model and processor of the main process, with `best_model.json` (the step and metrics of `best`), into
    `output_dir/best`, replacing the previous best by renames (see `start_staging`). Main process only: the others
    go on training meanwhile.
    """
    output_dir = Path(output_dir)
    staging = start_staging(output_dir, f".{BEST_DIR}.partial")
    write_model(accelerator, model, processor, staging)
    (staging / BEST_MODEL_FILE).write_text(json.dumps(asdict(best), indent=2) + "\n")
    publish_staging(staging, output_dir / BEST_DIR)
    return output_dir / BEST_DIR


def remove_partial_checkpoints(output_dir: str | os.PathLike) -> None:
    """Deletes what interrupted saves (checkpoints, the best model) left behind: the staging folders the record
    names, never a user's file."""
    for name in sorted(read_record(output_dir).staging):
        path = Path(output_dir) / name
        if path.exists():
            logger.warning(f"Removing the interrupted checkpoint save {path}.")
            shutil.rmtree(path, ignore_errors=True)
        record_staging(output_dir, name, add=False)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one sample's augmentation that depends only on the run's seed, the epoch and the sample."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class AugmentedSegmentation(torch.utils.data.Dataset):
    """
    Training samples: read, then augmented with a seed that depends only on (run seed, epoch, index), so that the
    same sample looks the same whichever process or worker reads it and after resuming. An unreadable sample is
    reported with its path and replaced by the next readable one, so that batches keep their size.
    """

    def __init__(self, data: SegmentationData, augmentation, seed: int):
        self.data = data
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for offset in range(min(MAX_REPLACEMENTS, len(self.data))):
            try:
                image, labels = self.data.load((index + offset) % len(self.data))
            except ImageInputError as error:
                logger.warning(f"Replacing an unreadable training sample: {error}")
                continue
            self.augmentation.set_random_seed(sample_seed(self.seed, self.epoch, index))
            augmented = self.augmentation(image=image, mask=labels.astype(np.uint16))
            return {
                "pixel_values": torch.from_numpy(augmented["image"]).permute(2, 0, 1).contiguous(),
                "labels": torch.from_numpy(augmented["mask"].astype(np.int64)),
            }
        raise RuntimeError(f"No readable training sample among the {MAX_REPLACEMENTS} from index {index} on.")
