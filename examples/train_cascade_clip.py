"""Train Cascade-CLIP with Accelerate, with the original recipe, from one CPU to many GPUs.

Inductive training on a benchmark, from a CLIP checkpoint:

    accelerate launch examples/train_cascade_clip.py --dataset coco-stuff-164k --data_dir data/coco_stuff164k \
        --setting inductive --clip_model openai/clip-vit-base-patch16 --output_dir runs/coco-inductive

Transductive continuation from the inductive model:

    accelerate launch examples/train_cascade_clip.py --dataset coco-stuff-164k --data_dir data/coco_stuff164k \
        --setting transductive --init_from runs/coco-inductive --output_dir runs/coco-transductive

Mixed precision and the distributed backend (DDP, DeepSpeed, FSDP) come from `accelerate config`. With
`--eval_steps N` the run evaluates every N steps and keeps the best model in `OUTPUT_DIR/best`; every run logs its
scalars to `OUTPUT_DIR/scalars.jsonl` and plots them into `OUTPUT_DIR/training_curves.png`.
"""

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cascade_clip_hf import CascadeClipForZeroShotSegmentation, CascadeClipImageProcessor, CascadeClipProcessor
from cascade_clip_hf.arguments import (
    CommandLineParser,
    add_data_arguments,
    check_output_argument,
    comma_separated_ints,
    data_source,
    hub_license,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    trackers_argument,
)
from cascade_clip_hf.atomic import MODEL, identity, output_files, record_outputs
from cascade_clip_hf.augmentation import training_augmentation
from cascade_clip_hf.data import DatasetLayoutError, evaluation_split, load_segmentation_data
from cascade_clip_hf.errors import configure_logging, counted, run_script
from cascade_clip_hf.evaluation import HEADLINE_METRICS, evaluate_split, markdown_summary, results_record
from cascade_clip_hf.hub import check_push, push_folder
from cascade_clip_hf.model_card import build_model_card, training_provenance, training_run_recipe, write_model_card
from cascade_clip_hf.presets import BACKGROUND_ZERO_BENCHMARKS, BENCHMARKS, default_train_steps
from cascade_clip_hf.segmenter import load_for_inference
from cascade_clip_hf.training import (
    ADJUSTABLE_SETTINGS,
    BEST_DIR,
    CHECKPOINT_PATTERN,
    EXACT_RESUME_SETTINGS,
    AugmentedSegmentation,
    BestModel,
    DataPosition,
    check_resumed_settings,
    check_saved_best_model,
    parameter_groups,
    poly_schedule,
    read_best_model,
    read_training_state,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_best,
    save_checkpoint,
    save_final,
    training_vocabulary,
)
from cascade_clip_hf.training_log import EVAL_PREFIX, SCALARS_FILE, ScalarLog, plot_training_curves, read_scalars
from cascade_clip_hf.vocabulary import embed_class_names, load_class_embeddings, load_tokenizer


logger = logging.getLogger("train_cascade_clip")


def parse_args(argv=None) -> argparse.Namespace:
    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    model = parser.add_argument_group("model")
    model.add_argument("--clip_model", default="openai/clip-vit-base-patch16", help="CLIP checkpoint to start from")
    model.add_argument("--init_from", help="a Cascade-CLIP model to continue from (e.g. inductive -> transductive)")
    model.add_argument("--class_embeddings", help=".npy of precomputed class embeddings (one row per class)")
    model.add_argument("--templates", nargs="+", help="prompt templates for a dataset without a preset")
    model.add_argument("--image_size", type=positive_int, default=512, help="position-embedding grid size (pixels)")
    model.add_argument(
        "--model_config",
        type=json.loads,
        default={},
        help="CascadeClipConfig arguments for a model built from CLIP, as JSON, e.g. '{\"cascade_stages\": []}'",
    )
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", required=True, help="folder for the model, checkpoints and logs")
    train.add_argument(
        "--max_train_steps", type=positive_int, help="optimizer steps; default: the original's for the benchmark"
    )
    train.add_argument("--train_batch_size", type=positive_int, default=4, help="images per process and step")
    train.add_argument(
        "--crop_size", type=positive_int, default=512, help="side of the square training crops (pixels)"
    )
    train.add_argument(
        "--train_scale",
        type=comma_separated_ints,
        default=[2048, 512],
        help="long,short sides of the random rescale before cropping (times a ratio in --scale_ratio_range)",
    )
    train.add_argument(
        "--scale_ratio_range",
        type=positive_float,
        nargs=2,
        default=[0.5, 2.0],
        metavar=("LOW", "HIGH"),
        help="range of the random rescale's ratio; 1 1 keeps images at --train_scale",
    )
    train.add_argument(
        "--no_photometric_distortion",
        action="store_true",
        help="no brightness/contrast/saturation/hue jitter (for data whose classes differ by colour)",
    )
    train.add_argument(
        "--learning_rate", type=positive_float, default=2e-5, help="base rate; prompts and head train at 10x"
    )
    train.add_argument("--weight_decay", type=non_negative_float, default=0.01, help="AdamW's weight decay")
    train.add_argument("--no_decay_on_norms", action="store_true", help="exempt LayerNorms from weight decay")
    train.add_argument("--warmup_steps", type=non_negative_int, default=1500, help="steps of linear warm-up")
    train.add_argument(
        "--gradient_accumulation_steps", type=positive_int, default=1, help="batches whose gradients make one step"
    )
    train.add_argument(
        "--activation_checkpointing", action="store_true", help="recompute layer activations in backward (less memory)"
    )
    train.add_argument(
        "--checkpointing_steps", type=non_negative_int, default=2000, help="save state every N steps (0: never)"
    )
    train.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    train.add_argument(
        "--report_to",
        type=trackers_argument,
        default="none",
        help="trackers, comma-separated (tensorboard, wandb, ...; each must be installed), all or none",
    )
    train.add_argument("--logging_steps", type=positive_int, default=10, help="log the losses every N steps")
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds everything random: prompt initialisation, data order, augmentation, dropout",
    )
    train.add_argument(
        "--num_workers", type=non_negative_int, default=2, help="data loading processes per training process"
    )
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--skip_eval", action="store_true", help="evaluate neither during training nor after")
    evaluation.add_argument(
        "--eval_steps",
        type=positive_int,
        help="also evaluate every N optimizer steps and after the last, keeping the best model in OUTPUT_DIR/best",
    )
    evaluation.add_argument(
        "--metric_for_best_model",
        choices=HEADLINE_METRICS,
        default="hiou",
        help="the metric the best model has the greatest value of (default: hiou)",
    )
    evaluation.add_argument(
        "--eval_split",
        help="default: val for a benchmark folder; the one of validation and val a Hugging Face dataset has",
    )
    evaluation.add_argument("--eval_batch_size", type=positive_int, default=1, help="images per process and step")
    evaluation.add_argument("--max_eval_samples", type=positive_int, help="evaluate only the first N images")
    hub = parser.add_argument_group("model card and hub")
    hub.add_argument(
        "--license",
        type=hub_license,
        help="the model's licence, a Hub licence id (other: the original release's non-commercial terms); default: "
        "apache-2.0 from CLIP, the licence of --init_from's card (the original's terms without one)",
    )
    hub.add_argument("--push_to_hub", action="store_true")
    hub.add_argument("--hub_model_id", help="org/name of the Hub repository")
    hub.add_argument("--hub_token")
    args = parser.parse_args(argv)
    if not args.dataset and not args.dataset_name:
        parser.error("pass --dataset (with --data_dir) or --dataset_name")
    if args.max_train_steps is None:
        if args.dataset not in BENCHMARKS:
            parser.error("--max_train_steps is required for a dataset without a preset")
        args.max_train_steps = default_train_steps(args.dataset, args.setting)
    if len(args.train_scale) != 2 or min(args.train_scale) < 1:
        parser.error(f"--train_scale takes two sides of at least 1 pixel, LONG,SHORT; got {args.train_scale}")
    if args.scale_ratio_range[0] > args.scale_ratio_range[1]:
        parser.error(f"--scale_ratio_range takes LOW HIGH with LOW <= HIGH; got {args.scale_ratio_range}")
    if args.eval_steps and args.skip_eval:
        parser.error("--eval_steps evaluates during training, --skip_eval not at all: pass one of them")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.push_to_hub:
        try:
            check_push(args.hub_model_id, args.hub_token)
        except ValueError as error:
            parser.error(f"--push_to_hub: {error}")
    if args.init_from and Path(args.init_from).is_dir():
        init_from, output_dir = Path(args.init_from).resolve(), Path(args.output_dir).resolve()
        if init_from == output_dir or output_dir in init_from.parents:
            parser.error(f"--init_from {args.init_from} is inside --output_dir {args.output_dir}: choose another")
    # The model's file names depend on it and on transformers: the folder may hold only this program's outputs.
    check_output_argument(parser, args.output_dir, kind=MODEL)
    check_earlier_run(parser, args)
    return args


def check_earlier_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """
    Refuses (one line, exit 2) a fresh run into a folder where an earlier run left checkpoints, `best/`, results or
    scalars, whose curves, best model and checkpoints it would mix with its own.
    """
    output_dir = Path(args.output_dir)
    if args.resume_from_checkpoint or not output_dir.is_dir():
        return
    earlier = sorted(
        path.name
        for path in output_dir.iterdir()
        if path.name in (BEST_DIR, "eval_results.json", SCALARS_FILE) or CHECKPOINT_PATTERN.fullmatch(path.name)
    )
    if earlier:
        parser.error(
            f"--output_dir {args.output_dir} holds an earlier run's checkpoints ({', '.join(earlier[:3])}): resume "
            "it with --resume_from_checkpoint latest, or choose another --output_dir"
        )


def build_model_and_processor(args, data) -> tuple[CascadeClipForZeroShotSegmentation, CascadeClipProcessor]:
    """A model whose default vocabulary is the dataset's classes, frozen as the original trains it."""
    if args.init_from:
        model, processor = load_for_inference(args.init_from)
        model.config.setting = args.setting
    else:
        preset = args.dataset if args.dataset in BENCHMARKS and not args.dataset_name else None
        overrides = {**args.model_config, **({"templates": args.templates} if args.templates else {})}
        model = CascadeClipForZeroShotSegmentation.from_clip_pretrained(
            args.clip_model,
            preset=preset,
            setting=args.setting,
            image_size=args.image_size,
            id2label=dict(enumerate(data.class_names)),
            seen_class_ids=data.seen_class_ids,
            **overrides,
        )
        # The original tests at short side 512 with 512 windows and stride 426 for a 512 model; other sizes scale.
        model.config.slide_crop_size = args.image_size
        model.config.slide_stride = args.image_size * 426 // 512
        processor = CascadeClipProcessor(
            image_processor=CascadeClipImageProcessor(
                size={"shortest_edge": args.image_size, "longest_edge": 4 * args.image_size},
                do_reduce_labels=args.dataset in BACKGROUND_ZERO_BENCHMARKS,
                mask_size=args.image_size,
            ),
            tokenizer=load_tokenizer(args.clip_model),
            templates=model.config.templates,
        )
    if args.init_from and model.config.class_names == data.class_names:
        resolve_seen_classes(model, data)
    if args.class_embeddings:
        embeddings = load_class_embeddings(args.class_embeddings, len(data.class_names), model.config.projection_dim)
        model.set_vocabulary(data.class_names, embeddings, data.seen_class_ids)
    elif model.config.class_names != data.class_names:
        embeddings = embed_class_names(model, processor.tokenizer, data.class_names, processor.templates)
        model.set_vocabulary(data.class_names, embeddings, data.seen_class_ids)
    processor.seen_classes = model.config.seen_class_names
    model.freeze_pretrained()
    return model, processor


def resolve_seen_classes(model, data) -> None:
    """
    The one set of seen classes a run continuing from `model`, whose classes are the dataset's, trains and evaluates
    with: `--seen_class_ids` or the benchmark's split where given (`data.seen_class_ids`; the model's vocabulary is
    updated to it), else the model's own. Left in `data.seen_class_ids` and the model's configuration alike.
    """
    model_seen = model.config.seen_class_ids
    if data.seen_class_ids is None:
        data.seen_class_ids = None if model_seen is None else list(model_seen)
        return
    if model_seen is None or sorted(model_seen) != sorted(data.seen_class_ids):
        logger.info(
            f"Seen classes {sorted(data.seen_class_ids)} (--seen_class_ids or the benchmark's split) replace "
            f"--init_from's {'all' if model_seen is None else sorted(model_seen)}."
        )
        model.set_vocabulary(data.class_names, model.class_embeddings, data.seen_class_ids)


def check_metric_for_best_model(args, eval_data) -> None:
    """A run that keeps its best model by a metric of unseen classes needs some: found out before the first step."""
    if not args.eval_steps or args.metric_for_best_model not in ("miou_unseen", "hiou"):
        return
    seen = eval_data.seen_class_ids
    if seen is None or set(range(len(eval_data.class_names))) <= set(seen):
        raise ValueError(
            f"--metric_for_best_model {args.metric_for_best_model} needs unseen classes, but every class of the "
            "evaluation split is seen: pass --seen_class_ids, or choose miou, miou_seen or pixel_accuracy"
        )


def evaluate_model(accelerator, model, processor, eval_data, args, split: str) -> dict | None:
    """
    The `results.json` record (metrics in percent) of the model on the evaluation split, by the test-time path of
    `examples/evaluate_cascade_clip.py`, on every process; None on all but the main one. The model is left in
    training mode and the random streams as they were (the evaluation's data loader draws a seed from them), so
    that a run evaluating during training trains exactly as one that does not.
    """
    device = accelerator.device
    with torch.random.fork_rng(
        devices=[] if device.type == "cpu" else [device], device_type=None if device.type == "cpu" else device.type
    ):
        metrics = evaluate_split(
            accelerator,
            accelerator.unwrap_model(model),
            processor,
            eval_data,
            batch_size=args.eval_batch_size,
            num_workers=args.num_workers,
            max_samples=args.max_eval_samples,
        )
    model.train()
    if not accelerator.is_main_process:
        return None
    return results_record(metrics, eval_data.class_names, dataset=args.dataset or args.dataset_name, split=split)


def main(argv=None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == ["none"] else args.report_to,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    # Every process runs this script: information once, from the main process; warnings and errors from all,
    # since some befall one process only.
    configure_logging(
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    # Pre-flight: what the run needs after its last step (the evaluation split and its columns, what the card
    # says) is read before its first, so that a mistake costs seconds, not a run.
    source = data_source(args)
    data = load_segmentation_data(source, "train")
    eval_split = None if args.skip_eval else args.eval_split or evaluation_split(source)
    eval_data = None if args.skip_eval else load_segmentation_data(source, eval_split)
    if eval_data is not None:
        eval_data.check_first_sample(f"the evaluation split {eval_split!r}")
    provenance = training_provenance(args.clip_model, args.init_from, args.license)
    set_seed(args.seed)
    model, processor = build_model_and_processor(args, data)
    # One set of seen classes for training and every evaluation (during training, final, best model, card).
    if eval_data is not None:
        eval_data.seen_class_ids = data.seen_class_ids
    check_metric_for_best_model(args, eval_data)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(output_dir)
    accelerator.wait_for_everyone()

    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    vocabulary = training_vocabulary(len(data.class_names), data.seen_class_ids, args.setting)
    augmentation = training_augmentation(
        crop_size=args.crop_size,
        scale=tuple(args.train_scale),
        ratio_range=tuple(args.scale_ratio_range),
        photometric_distortion=not args.no_photometric_distortion,
    )
    train_dataset = AugmentedSegmentation(data, augmentation, args.seed)
    train_dataloader = DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        # Starting an epoch's iterator draws a seed: from its own generator, it leaves the global random stream
        # (stochastic depth, dropout; saved with each checkpoint) the same whether or not the run was resumed.
        generator=torch.Generator().manual_seed(args.seed),
    )
    if len(train_dataloader) == 0:
        raise DatasetLayoutError(
            f"The training set ({counted(len(data), 'image')}) is smaller than one batch of {args.train_batch_size}."
        )
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.learning_rate, args.weight_decay, no_decay_on_norms=args.no_decay_on_norms)
    )
    scheduler = poly_schedule(optimizer, args.max_train_steps, warmup_steps=args.warmup_steps)
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    # Stepped by hand once per optimizer step: the schedule counts iterations, not samples seen by all processes.
    accelerator.register_for_checkpointing(scheduler)
    unwrapped = accelerator.unwrap_model(model)
    class_embeds = unwrapped.class_embeddings[vocabulary.class_ids]
    seen_class_mask = vocabulary.seen_class_mask.to(accelerator.device)

    # What shapes the result, as JSON values: recorded in each checkpoint, compared on resuming.
    settings = json.loads(
        json.dumps(
            {
                **{name: getattr(args, name) for name in EXACT_RESUME_SETTINGS + ADJUSTABLE_SETTINGS},
                "dataset": args.dataset or args.dataset_name,
                "seen_class_ids": None if data.seen_class_ids is None else sorted(data.seen_class_ids),
            }
        )
    )
    completed_steps, position = 0, DataPosition(epoch=0, batches=0, batches_per_epoch=len(train_dataloader))
    best = BestModel(args.metric_for_best_model)
    if args.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
        if checkpoint is None:
            logger.info(f"No checkpoint in {output_dir} yet: starting from step 0.")
        else:
            best = read_best_model(checkpoint, args.metric_for_best_model)
            check_saved_best_model(output_dir, best, checkpoint)
            accelerator.load_state(str(checkpoint))
            completed_steps, position = read_training_state(
                checkpoint, len(train_dataloader), args.gradient_accumulation_steps
            )
            for line in check_resumed_settings(checkpoint, settings):
                logger.info(line)
            logger.info(
                f"Resumed from {checkpoint} at step {completed_steps}, epoch {position.epoch}, "
                f"batch {position.batches}."
            )

    if accelerator.is_main_process:
        before = {path.name: identity(path) for path in output_dir.iterdir()}
        # Trackers take numbers, strings and booleans (TensorBoard's hyperparameters refuse anything else).
        config = {
            key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            for key, value in vars(args).items()
            if value is not None
        }
        accelerator.init_trackers("cascade_clip", config=config)
        # What the trackers create or add to here (TensorBoard's logs) is the run's own: a resumed run may write
        # there again. (Whatever they touched was checked as the program's before the run.)
        touched = [path.name for path in output_dir.iterdir() if before.get(path.name) != identity(path)]
        record_outputs(output_dir, touched, MODEL)
        # Written whatever the trackers; a resumed run drops the lines logged after its checkpoint.
        scalar_log = ScalarLog(output_dir, completed_steps)
    logger.info(
        f"Training {args.setting} on {counted(len(data), 'image')}, "
        f"{counted(len(vocabulary.class_ids), 'class', 'classes')}, {counted(args.max_train_steps, 'step')} of "
        f"{args.train_batch_size} x {accelerator.num_processes} x "
        f"{args.gradient_accumulation_steps} images."
    )
    progress = tqdm(
        total=args.max_train_steps,
        initial=completed_steps,
        desc="Training",
        disable=not accelerator.is_local_main_process,
    )
    postfix = {}  # the last loss and learning rate, and hIoU once evaluated
    evaluates_during_training = eval_data is not None and args.eval_steps is not None
    results, evaluated_step = None, None
    model.train()
    while completed_steps < args.max_train_steps:
        train_dataset.set_epoch(position.epoch)
        train_dataloader.set_epoch(position.epoch)
        batches = (
            accelerator.skip_first_batches(train_dataloader, position.batches)
            if position.batches
            else train_dataloader
        )
        for batch in batches:
            with accelerator.accumulate(model):
                # Transductive labels hide unseen classes' pixels; the model pseudo-labels them before the loss.
                outputs = model(
                    pixel_values=batch["pixel_values"],
                    class_embeds=class_embeds,
                    seen_class_mask=seen_class_mask,
                    labels=vocabulary.labels(batch["labels"]),
                )
                loss = outputs.loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            # Counted as the data loader yields them: Accelerate also steps on an epoch's incomplete accumulation.
            position = position.advance()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            completed_steps += 1
            learning_rate = scheduler.get_last_lr()[0]
            scalars = {}
            if completed_steps % args.logging_steps == 0:
                scalars = {
                    "loss": loss.item(),
                    "loss_mask": outputs.mask_loss.item(),
                    "loss_dice": outputs.dice_loss.item(),
                    "lr": learning_rate,
                }
            if evaluates_during_training and (
                completed_steps % args.eval_steps == 0 or completed_steps == args.max_train_steps
            ):
                results = evaluate_model(accelerator, model, processor, eval_data, args, eval_split)
                evaluated_step = completed_steps
                if accelerator.is_main_process:
                    headline = {key: results[key] for key in HEADLINE_METRICS}
                    scalars.update({EVAL_PREFIX + key: value for key, value in headline.items() if value is not None})
                    postfix["hIoU"] = "n/a" if headline["hiou"] is None else f"{headline['hiou']:.2f}"
                    if best.improved_by(headline):
                        best = BestModel(args.metric_for_best_model, completed_steps, headline)
                        save_best(accelerator, model, processor, output_dir, best)
            if scalars:
                accelerator.log(scalars, step=completed_steps)
                if accelerator.is_main_process:
                    scalar_log.write(completed_steps, scalars)
            progress.update(1)
            postfix.update(loss=f"{loss.item():.4f}", lr=f"{learning_rate:.2e}")
            progress.set_postfix(postfix)
            if args.checkpointing_steps and completed_steps % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, completed_steps, position, best, settings)
            if completed_steps >= args.max_train_steps:
                break
    progress.close()

    save_final(accelerator, model, processor, output_dir)
    # The evaluation after the last step, unless the run has just done it.
    if eval_data is not None and evaluated_step != args.max_train_steps:
        results = evaluate_model(accelerator, model, processor, eval_data, args, eval_split)
    if accelerator.is_main_process:
        scalar_log.close()
        if results is not None:
            with output_files(output_dir, MODEL) as staging:
                (staging / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
            logger.info("Evaluation:\n" + markdown_summary(results))
        if best.step is not None:
            logger.info(f"Best model by {best.metric}: step {best.step}, kept in {output_dir / BEST_DIR}.")
        curves = plot_training_curves(output_dir) if read_scalars(scalar_log.path) else None
        card = build_model_card(
            unwrapped.config,
            repo_id=args.hub_model_id or output_dir.name,
            dataset=args.dataset,
            results=results,
            split=eval_split,
            training=training_run_recipe(
                crop_size=args.crop_size,
                train_scale=args.train_scale,
                scale_ratio_range=args.scale_ratio_range,
                photometric_distortion=not args.no_photometric_distortion,
                learning_rate=args.learning_rate,
                weight_decay=args.weight_decay,
                no_decay_on_norms=args.no_decay_on_norms,
                warmup_steps=args.warmup_steps,
                steps=args.max_train_steps,
                batch=f"{args.train_batch_size} x {accelerator.num_processes} x {args.gradient_accumulation_steps} "
                "images",
                seed=args.seed,
                evaluated_every=args.eval_steps if evaluates_during_training else None,
            ),
            best_during_training=asdict(best),
            curves=curves and curves.name,
            **provenance,
        )
        write_model_card(output_dir, card, MODEL)
        if args.push_to_hub:
            url = push_folder(output_dir, args.hub_model_id, token=args.hub_token)
            logger.info(f"Pushed to {url}")
    # Tear the process group down together: a gloo rank that leaves while another still writes the model card
    # can leave that one hanging at its own teardown.
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    run_script(main)
