"""The `cascade-clip` command line."""

import argparse
import errno
import json
import logging
import os
import sys
import tempfile
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import PIL.Image
import torch
import transformers
from transformers.utils import logging as transformers_logging

from . import __version__
from .arguments import (
    CommandLineParser,
    class_names_argument,
    comma_separated_ints,
    positive_int,
    torch_device,
    unit_interval,
)
from .atomic import SEGMENTATION, VOCABULARY, check_output_folder, output_files, recorded_names, shown
from .configuration_cascade_clip import SETTINGS
from .convert_original_checkpoint import DEFAULT_TOKENIZER, convert_checkpoint
from .errors import INPUT_ERRORS, configure_logging, counted, one_line
from .image_processing_cascade_clip import ImageInputError, check_image_file
from .onnx_export import QUANTIZATIONS
from .presets import BENCHMARKS
from .segmenter import BACKENDS, INFERENCE_DTYPES


logger = logging.getLogger("cascade_clip_hf")


def add_convert_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an original Cascade-CLIP checkpoint to a Hugging Face folder",
        description="Converts a checkpoint of the original release into a save_pretrained folder (safetensors "
        "weights, config, processor). Sizes are read from the tensors; what they cannot tell comes from --preset "
        "or the flags.",
    )
    parser.add_argument("checkpoint", help="the original .pth checkpoint")
    parser.add_argument(
        "--output-dir", "--output", dest="output_dir", required=True, help="where to write the converted model"
    )
    parser.add_argument("--preset", choices=BENCHMARKS, help="the benchmark the checkpoint was trained on")
    parser.add_argument(
        "--setting", choices=SETTINGS, help="the setting the checkpoint was trained in (default: inductive)"
    )
    parser.add_argument("--class-names", type=class_names_argument, help='"cat,dog,..." or a .txt/.json file')
    parser.add_argument("--class-embeddings", help="a .npy of precomputed class embeddings, one row per class")
    parser.add_argument("--seen-class-ids", type=comma_separated_ints, help="ids of the classes seen in training")
    parser.add_argument("--extract-layers", type=comma_separated_ints, help="tapped layers (default: 5,6,7,8,9,10)")
    parser.add_argument("--templates", nargs="+", help='prompt templates, e.g. "a photo of a {}."')
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="name or path of a CLIP tokenizer")
    parser.add_argument("--vision-heads", type=int, help="attention heads of the vision tower (default: width/64)")
    parser.add_argument("--text-heads", type=int, help="attention heads of the text tower (default: width/64)")
    parser.add_argument("--decoder-heads", type=int, help="attention heads of the decoders (default: 8)")
    parser.set_defaults(run=run_convert)


def run_convert(args) -> int:
    report = convert_checkpoint(
        args.checkpoint,
        args.output_dir,
        preset=args.preset,
        setting=args.setting,
        class_names=args.class_names,
        class_embeddings=args.class_embeddings,
        seen_class_ids=args.seen_class_ids,
        extract_layers=args.extract_layers,
        templates=args.templates,
        tokenizer=args.tokenizer,
        vision_heads=args.vision_heads,
        text_heads=args.text_heads,
        decoder_heads=args.decoder_heads,
    )
    logger.info(report.summary())
    return 0


def add_parity_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "parity",
        help="check the port against test vectors of the original implementation",
        description="Converts a fixture's original checkpoint with the settings of its meta.json, recomputes "
        "every expected tensor and prints the errors against the tolerances of a faithful fp32 port.",
    )
    parser.add_argument("fixture_dir", help="a folder with checkpoint.pth, inputs/expected.safetensors, meta.json")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="name or path of a CLIP tokenizer")
    parser.set_defaults(run=run_parity)


def run_parity(args) -> int:
    from .fixture_parity import compare_to_expected, convert_fixture, fixture_outputs, format_report
    from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation
    from .segmenter import without_loading_bars

    with tempfile.TemporaryDirectory() as workdir, without_loading_bars():
        model_dir = convert_fixture(args.fixture_dir, Path(workdir) / "model", args.tokenizer)
        model = CascadeClipForZeroShotSegmentation.from_pretrained(model_dir)
    report = compare_to_expected(fixture_outputs(model, args.fixture_dir), args.fixture_dir)
    print(format_report(report))
    failed = [name for name, row in report.items() if not row["ok"]]
    if failed:
        logger.error(f"Outside tolerance: {', '.join(failed)}")
        return 1
    logger.info(f"Every tensor matches the original implementation ({counted(len(report), 'tensor')}).")
    return 0


# Every format PIL can open (.ppm, .jfif, .tga, ...), by its own registry rather than a list of ours.
IMAGE_SUFFIXES = {
    suffix for suffix, format_name in PIL.Image.registered_extensions().items() if format_name in PIL.Image.OPEN
}


def add_segment_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images into the classes you name",
        description="Segments images (files, or folders of images) into the given class names, or the model's "
        "default vocabulary, with the original's test-time sliding window. Writes for each image, named by its file "
        "name with its suffix (photo.jpg), a class-id map (photo.jpg_classes.png, pixel values index --labels), a "
        "coloured overlay with a legend (photo.jpg_overlay.png) and the share of pixels each class wins with the "
        "image it came from (photo.jpg.json).",
    )
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="also segment the images of the folders' subfolders, at any depth, except hidden ones (.name) and "
        "links to folders; the results' folders mirror them under --output-dir",
    )
    parser.add_argument(
        "--model",
        help="a Cascade-CLIP model: folder or Hub id (default: the tiny toy-world demo model shipped in the package, "
        "which only knows toy-world scenes such as examples/scenes)",
    )
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument("--labels", type=class_names_argument, help='"cat,grass,sky" or a .txt/.json file')
    classes.add_argument(
        "--vocabulary", help="a .safetensors file of class names embedded once by `cascade-clip embed`"
    )
    parser.add_argument(
        "--output-dir", "--output", dest="output", metavar="DIR", required=True, help="folder for the results"
    )
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass")
    parser.add_argument("--crop-size", type=positive_int, help="sliding-window size (default: the model's)")
    parser.add_argument("--stride", type=positive_int, help="sliding-window stride (default: the model's)")
    parser.add_argument("--window-batch-size", type=positive_int, help="windows per forward pass (default: all)")
    parser.add_argument(
        "--alpha", type=unit_interval, default=0.5, help="opacity of the class colours in the overlay, 0 to 1"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help=f"threads torch computes with (default: torch's own choice, {torch.get_num_threads()} here)",
    )
    add_dtype_argument(parser)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=BACKENDS[0],
        help="what runs the model (default: %(default)s); onnx and onnx-int8 run an `export-onnx` folder (--model: "
        "it, or a model folder with it in onnx/) in ONNX Runtime on the CPU",
    )
    parser.set_defaults(run=run_segment)


def add_device_argument(parser) -> None:
    """`--device`, where the model runs, as `segment` and `embed` take it."""
    parser.add_argument(
        "--device",
        type=torch_device,
        default="auto",
        help="auto (a CUDA GPU if there is one, else MPS, else the CPU), cpu, cuda, cuda:1 or mps",
    )


def add_dtype_argument(parser) -> None:
    """`--dtype`, the number format the model is loaded in, as `segment` and `embed` take it."""
    parser.add_argument(
        "--dtype",
        choices=INFERENCE_DTYPES,
        default=INFERENCE_DTYPES[0],
        help="number format of the model (default: %(default)s, the original's results); bfloat16 and float16 run "
        "faster where the hardware has them, and may change a few pixels",
    )


@dataclass(frozen=True)
class ImageSource:
    """
    An image to segment: `path`, its file; `given`, the input of the command line it was found from (a folder, or
    the file itself); `relative`, its path relative to that folder (its name for a file given itself), which names
    its results and the folder they go in.
    """

    path: Path
    given: str
    relative: PurePosixPath


def image_sources(inputs: list[str], recursive: bool = False, output: Path | None = None) -> list[ImageSource]:
    """
    Files as given (missing ones too, to be reported when read), and the images (by suffix) of folders, sorted;
    with `recursive`, those of their subfolders too, at any depth, except hidden ones, links to folders and the
    folder `output`. A folder's entry named like an image that is not a readable regular file (a folder, named
    pipe, socket, device, broken link, or a file without read permission) is left out with a warning. A file
    reached twice (given twice, or given and found in a folder given) is segmented once, where it is first found.
    """
    sources, seen = [], set()
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            skipped = output.resolve() if output is not None else None
            found = folder_images(path, recursive, skipped)
            found_sources = [
                ImageSource(image, name, PurePosixPath(image.relative_to(path).as_posix())) for image in found
            ]
        else:
            found_sources = [ImageSource(path, name, PurePosixPath(path.name))]
        for source in found_sources:
            key = source.path.resolve() if source.path.exists() else source.path
            if key not in seen:
                seen.add(key)
                sources.append(source)
    return sources


def folder_images(folder: Path, recursive: bool, skipped: Path | None) -> list[Path]:
    """The images of `folder`, in name order, and with `recursive` those of its subfolders (see `image_sources`)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        logger.warning(f"warning: skipping the folder {shown(folder)}: {error.strerror or one_line(error)}")
        return []
    images = []
    for entry in entries:
        if recursive and entry.is_dir() and not entry.is_symlink():
            if not entry.name.startswith(".") and entry.resolve() != skipped:
                images += folder_images(entry, recursive, skipped)
        elif entry.suffix.lower() in IMAGE_SUFFIXES and readable_file(entry):
            images.append(entry)
    return images


def readable_file(path: Path) -> bool:
    """Whether `path` is a regular file that can be read; if not, a warning line names it and says what it is."""
    try:
        check_image_file(path)
    except ImageInputError as error:
        logger.warning(f"warning: skipping {one_line(error, {str(path): shown(path)})}")
        return False
    return True


def result_names(sources: list[ImageSource]) -> list[PurePosixPath]:
    """
    What each image's results are named by, relative to the output folder: its path relative to its input, suffix
    included (`trip/photo.jpg`), so that `photo.jpg` and `photo.png` stay apart and a name does not change from run
    to run. A name another input's image took already (ignoring case, as some file systems do) gets `-2`, `-3`, ...
    """
    taken, names = set(), []
    for source in sources:
        name, number = source.relative, 1
        while str(name).casefold() in taken:
            number += 1
            name = source.relative.with_name(f"{source.relative.name}-{number}")
        taken.add(str(name).casefold())
        names.append(name)
    return names


def check_result_folders(output: Path, names: list[PurePosixPath]) -> None:
    """Checks, before any work, that the results named `names` can be written into `output` and its subfolders."""
    files_by_folder = defaultdict(list)
    for name in names:
        files_by_folder[name.parent] += segmentation_files(name.name)
    for folder, files in files_by_folder.items():
        check_output_folder(output / folder, files, kind=SEGMENTATION)


def segmentation_files(name: str) -> list[str]:
    """The files written for the image of results name `name`: class-id map, overlay and class shares."""
    return [f"{name}_classes.png", f"{name}_overlay.png", f"{name}.json"]


# zlib's fastest level: a 12-megapixel overlay encodes 2-4x faster than at PIL's default (6) and 1-13% larger (level
# 0 is 80% larger); class maps, mostly runs of one value, stay a hundredth of their raw size.
PNG_COMPRESSION = 1


def write_segmentation(
    image, segments: list[dict], class_names: list[str], output: Path, name: PurePosixPath, alpha: float, source
):
    """Writes the results of `source`, the `ImageSource` of `image`, under the results name `name` in `output`."""
    from .visualization import class_fractions, overlay_with_legend, segmentation_from_masks

    segmentation = segmentation_from_masks(segments, class_names, image.size)
    dtype = "uint8" if len(class_names) <= 256 else "uint16"
    classes_file, overlay_file, fractions_file = segmentation_files(name.name)
    with output_files(output / name.parent, SEGMENTATION) as staging:
        PIL.Image.fromarray(segmentation.astype(dtype)).save(staging / classes_file, compress_level=PNG_COMPRESSION)
        overlay = overlay_with_legend(image, segmentation, class_names, alpha=alpha)
        overlay.save(staging / overlay_file, compress_level=PNG_COMPRESSION)
        shares = {
            "source": str(source.relative),
            "input": source.given,
            "class_names": class_names,
            "fractions": class_fractions(segmentation, class_names),
        }
        (staging / fractions_file).write_text(json.dumps(shares, indent=2))


def segment_each(segmenter, images: list, **options) -> list:
    """
    The zero-shot pipeline's segments for each image, or the exception that image raised: a batch that fails is
    run again one image at a time, so that one bad image does not lose the others' results.
    """
    try:
        return segmenter(images, batch_size=len(images), **options)
    except Exception as error:  # whatever fails on one image skips that image only
        if len(images) == 1:
            return [error]
    return [segment_each(segmenter, [image], **options)[0] for image in images]


def skip_message(path: Path, error: Exception) -> str:
    """The one line reporting a skipped image: the file, then why (errors of reading name the file already)."""
    name = shown(path)
    reason = one_line(error, {str(path): name})
    return f"error: {reason}" if reason.startswith(name) else f"error: {name}: {reason}"


# Errors of writing a file that only its name causes: that image's results are skipped, the run goes on.
UNWRITABLE_NAME = {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL}


def own_outputs_left_out(sources: list[ImageSource], output: Path) -> list[ImageSource]:
    """
    `sources` without the results an earlier run wrote into `output` or its subfolders, when they are also input
    folders.
    """
    if not output.is_dir():
        return sources
    folder = output.resolve()
    folders = {source.path.parent for source in sources}
    recorded = {parent: recorded_names(parent) for parent in folders if parent.resolve().is_relative_to(folder)}
    kept = [source for source in sources if source.path.name not in recorded.get(source.path.parent, ())]
    if len(kept) < len(sources):
        left_out = counted(len(sources) - len(kept), "file")
        logger.info(f"Leaving out {left_out} cascade-clip wrote into {shown(output)} itself.")
    return kept


def check_run_settings(segmenter, labels: list[str] | None, crop_size: int | None, stride: int | None) -> None:
    """
    Settings of the whole run (the sliding window, the vocabulary) fail it before any image is read, rather than
    failing every image one by one.
    """
    from .sliding_window import check_window
    from .vocabulary import embed_class_names

    config = segmenter.model.config
    crop_size = crop_size if crop_size is not None else config.slide_crop_size
    stride = stride if stride is not None else config.slide_stride
    check_window(crop_size, stride, config.vision_config.patch_size)
    if labels is not None:
        # Embedded once here (the model keeps them), so that classes it cannot tell apart fail the run now.
        embed_class_names(segmenter.model, segmenter.processor.tokenizer, labels, segmenter.processor.templates)


def read_ahead(read: Callable, sources: list[ImageSource], reader: ThreadPoolExecutor, ahead: int) -> Iterator[tuple]:
    """
    `(source, pixels)` for each source in order, `pixels` being what `read(source.path)` returned or the exception it
    raised; `reader` reads at most `ahead` images beyond the one last yielded, so memory stays bounded.
    """
    pending = deque()
    for source in sources:
        pending.append((source, reader.submit(read, source.path)))
        if len(pending) > ahead:
            yield outcome(*pending.popleft())
    while pending:
        yield outcome(*pending.popleft())


def outcome(source: ImageSource, future: Future) -> tuple:
    """`(source, result)` of a finished task, the result being the exception the task raised if it failed."""
    try:
        return source, future.result()
    except Exception as error:  # whatever fails on one image skips that image only
        return source, error


def batches(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@contextmanager
def background_thread(name: str) -> Iterator[ThreadPoolExecutor]:
    """
    One worker thread. Leaving the block waits for the task it is running (writes are atomic, so an interrupt
    leaves them whole) and drops those not yet started.
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Within the block, torch computes with `count` threads (None: as it is); the count is restored after."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def finished_writes(writes: deque, progress) -> int:
    """
    Waits for the writes in `writes` (`(path, future)`, in input order), empties it and returns how many images
    could not be written because of their names. Any other failure (a full disk, a read-only folder) is raised:
    no later image could be written either.
    """
    failures = 0
    while writes:
        path, write = writes.popleft()
        try:
            write.result()
        except OSError as error:
            if error.errno not in UNWRITABLE_NAME:
                raise
            logger.error(f"error: {shown(path)}: its results cannot be written ({one_line(error)})")
            failures += 1
        progress.update()
    return failures


def run_segment(args) -> int:
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .segmenter import DEMO_MODEL, load_segmenter, vocabulary
    from .vocabulary import check_class_names, check_vocabulary_fits, load_vocabulary

    if args.labels is not None:
        check_class_names(args.labels, "--labels")
    own_vocabulary = load_vocabulary(args.vocabulary) if args.vocabulary is not None else None
    labels = own_vocabulary.class_names if own_vocabulary is not None else args.labels
    check_output_folder(args.output, [], kind=SEGMENTATION)  # an empty name, a file, a folder not writable
    output = Path(args.output)
    sources = own_outputs_left_out(image_sources(args.inputs, args.recursive, output), output)
    if not sources:
        raise ValueError(f"No images found in {', '.join(args.inputs)}.")
    names = result_names(sources)
    # Before any work; each write checks its own files again.
    check_result_folders(output, names)
    segmenter = load_segmenter(args.model or str(DEMO_MODEL), args.device, args.dtype, args.backend, args.threads)
    if own_vocabulary is not None:
        check_vocabulary_fits(own_vocabulary, segmenter.model, segmenter.processor, args.vocabulary)
    class_names = vocabulary(segmenter, labels)

    options = {
        "candidate_labels": labels,
        "class_embeds": own_vocabulary.class_embeds if own_vocabulary is not None else None,
        "crop_size": args.crop_size,
        "stride": args.stride,
        "window_batch_size": args.window_batch_size,
    }
    failures, names_in_order, writes = 0, iter(names), deque()
    with torch_threads(args.threads):
        check_run_settings(segmenter, args.labels, args.crop_size, args.stride)
        # The model runs here while one thread reads the next batch and another writes the previous one. Error
        # lines go above the progress bar, each on a line of its own, in the order of the inputs.
        with (
            logging_redirect_tqdm(),
            tqdm(total=len(sources), desc="Segmenting", unit="image") as progress,
            background_thread("read") as reader,
            background_thread("write") as writer,
        ):
            read = segmenter.image_processor.read_image
            for batch in batches(read_ahead(read, sources, reader, args.batch_size), args.batch_size):
                readable = [pixels for _, pixels in batch if not isinstance(pixels, Exception)]
                results = iter(segment_each(segmenter, readable, **options) if readable else [])
                failures += finished_writes(writes, progress)
                for source, pixels in batch:
                    name = next(names_in_order)
                    segments = pixels if isinstance(pixels, Exception) else next(results)
                    if isinstance(segments, Exception):
                        logger.error(skip_message(source.path, segments))
                        failures += 1
                        progress.update()
                        continue
                    image = PIL.Image.fromarray(pixels)
                    write = writer.submit(
                        write_segmentation, image, segments, class_names, output, name, args.alpha, source
                    )
                    writes.append((source.path, write))
            failures += finished_writes(writes, progress)
    logger.info(f"Segmented {len(sources) - failures} of {counted(len(sources), 'image')} into {output}.")
    return 1 if failures else 0


def add_embed_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="embed class names once, for `segment --vocabulary`",
        description="Runs class names (in the model's prompt templates) through the model's text tower once and "
        "writes their embeddings, the names, templates, seen classes and a fingerprint of the text tower's weights "
        "to a .safetensors file, which `cascade-clip segment --vocabulary` then uses without the text tower.",
    )
    parser.add_argument(
        "--labels", type=class_names_argument, required=True, help='"cat,grass,sky" or a .txt/.json file'
    )
    parser.add_argument("--output", metavar="FILE", required=True, help="the .safetensors file to write")
    parser.add_argument("--model", help="a Cascade-CLIP model: folder or Hub id (default: the demo model)")
    parser.add_argument("--templates", nargs="+", help='prompt templates (default: the model\'s), e.g. "a {}."')
    add_device_argument(parser)
    add_dtype_argument(parser)
    parser.set_defaults(run=run_embed)


def run_embed(args) -> int:
    from .segmenter import DEMO_MODEL, load_for_inference
    from .vocabulary import check_class_names, check_templates, embed_vocabulary, save_vocabulary

    class_names = check_class_names(args.labels, "--labels")
    templates = check_templates(args.templates, "--templates") if args.templates is not None else None
    output = Path(args.output)
    if output.is_dir():
        raise ValueError(
            f"--output {shown(output)} is a folder: name the .safetensors file to write the vocabulary to, e.g. "
            f"{shown(output / 'vocabulary.safetensors')}."
        )
    if output.suffix != ".safetensors":
        raise ValueError(f"--output {shown(output)}: name the .safetensors file to write the vocabulary to.")
    check_output_folder(output.parent, [output.name], kind=VOCABULARY)
    model_name = args.model or str(DEMO_MODEL)
    model, processor = load_for_inference(model_name, args.dtype)
    model.to(args.device)
    own_vocabulary = embed_vocabulary(model, processor, class_names, templates, model_name)
    save_vocabulary(own_vocabulary, output)
    logger.info(
        f"Embedded {counted(len(class_names), 'class', 'classes')} in "
        f"{counted(len(own_vocabulary.templates), 'template')} into {shown(output)}."
    )
    return 0


def add_export_onnx_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-onnx",
        help="export a model to ONNX, to segment with ONNX Runtime",
        description="Exports the image path (pixel values and class embeddings to mask logits) and the text tower "
        "(class prompts to class embeddings) to ONNX, beside the config, processor and a model card carrying the "
        "weights' licence, and checks ONNX Runtime against PyTorch on random inputs.",
    )
    parser.add_argument("model", help="a Cascade-CLIP model: folder or Hub id")
    parser.add_argument(
        "--output-dir", "--output", dest="output", required=True, help="the folder to write the export into"
    )
    parser.add_argument("--quantize", choices=QUANTIZATIONS, help="also write the image path with int8 weights")
    parser.add_argument("--opset", type=positive_int, help="ONNX opset (default: torch's)")
    parser.set_defaults(run=run_export_onnx)


def run_export_onnx(args) -> int:
    from .onnx_export import export_onnx

    export_onnx(args.model, args.output, args.quantize, args.opset)
    return 0


def add_info_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show a model's classes and settings",
        description="Shows a model's default vocabulary (id: name, and which classes it did not see in training), "
        "its prompt templates and its settings: input size, test-time resize, sliding window, towers, cascade "
        "stages and decoders, dtype, parameters, whether it is a toy, its license. Reads the configuration, "
        "processor and model card only, never the weights.",
    )
    parser.add_argument(
        "model", nargs="?", help="a Cascade-CLIP model: folder or Hub id (default: the shipped toy-world demo model)"
    )
    parser.add_argument("--json", action="store_true", help="print the information as JSON, for programs")
    parser.set_defaults(run=run_info)


def run_info(args) -> int:
    from .model_info import format_model_info, model_info
    from .segmenter import DEMO_MODEL

    info = model_info(args.model or str(DEMO_MODEL))
    print(json.dumps(info, indent=2) if args.json else format_model_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="cascade-clip",
        description="Cascade-CLIP zero-shot segmentation tools. Options may be spelled with dashes or underscores "
        "(--output-dir or --output_dir).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_line(),
        help="print the versions of cascade-clip-hf, torch and transformers, and exit",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(subparsers)
    add_parity_parser(subparsers)
    add_segment_parser(subparsers)
    add_embed_parser(subparsers)
    add_export_onnx_parser(subparsers)
    add_info_parser(subparsers)
    return parser


def version_line() -> str:
    """What `cascade-clip --version` prints: this package's version and those of torch and transformers."""
    return f"cascade-clip-hf {__version__} (torch {torch.__version__}, transformers {transformers.__version__})"


def main(argv: list[str] | None = None) -> int:
    """
    Runs `cascade-clip` with `argv` (default: the process's arguments); returns the exit code, 2 for bad input.
    Ctrl-C is left to the console command, `cascade_clip_command.main`, which also covers this module's imports.
    """
    args = build_parser().parse_args(argv)
    configure_logging(level=logging.INFO, format="%(message)s")
    transformers_logging.set_verbosity_error()
    try:
        code = args.run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader of what was printed stopped early (`| head`); stdout now goes nowhere, so that Python's own
        # flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except INPUT_ERRORS as error:
        logger.error(f"error: {one_line(error)}")
        return 2


if __name__ == "__main__":
    from cascade_clip_command import main as command

    sys.exit(command())
