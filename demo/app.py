"""Entry point of the Hugging Face Space: `python demo/app.py` runs the same app locally.

The model comes from the CASCADE_CLIP_MODEL environment variable (a Hub id or a folder); without it, the tiny
toy-world model shipped in the package, which works offline. CASCADE_CLIP_DTYPE sets its number format: float32 (the
default, the original's results), bfloat16 or float16 (faster where the hardware has them).
"""

import logging
import os
import sys

from cascade_clip_hf.demo import build_demo
from cascade_clip_hf.errors import INPUT_ERRORS, configure_logging, one_line
from cascade_clip_hf.segmenter import DEMO_MODEL, INFERENCE_DTYPES


logger = logging.getLogger("cascade_clip_hf")


if __name__ == "__main__":
    configure_logging(format="%(message)s")
    named_model = os.environ.get("CASCADE_CLIP_MODEL")
    dtype = os.environ.get("CASCADE_CLIP_DTYPE") or INFERENCE_DTYPES[0]
    try:
        if dtype not in INFERENCE_DTYPES:
            raise ValueError(
                f"the environment variable CASCADE_CLIP_DTYPE is {dtype!r}: set it to one of "
                f"{', '.join(INFERENCE_DTYPES)}, or leave it unset for {INFERENCE_DTYPES[0]}."
            )
        # Photo classes as an example; a toy model reads none of them and starts from its own vocabulary.
        demo = build_demo(named_model or str(DEMO_MODEL), example_labels="cat, grass, sky", dtype=dtype)
    except INPUT_ERRORS as error:
        logger.error(f"error: {one_line(error)}")
        sys.exit(2)
    demo.launch()
