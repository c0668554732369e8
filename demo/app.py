"""Entry point of the Hugging Face Space: `python demo/app.py` runs the same app locally.

The model comes from the CASCADE_CLIP_MODEL environment variable (a Hub id or a folder); without it, the tiny
toy-world model shipped in the package, which works offline.
"""

import os
import sys

from cascade_clip_hf.demo import build_demo
from cascade_clip_hf.errors import INPUT_ERRORS, one_line
from cascade_clip_hf.segmenter import DEMO_MODEL


if __name__ == "__main__":
    model_name = os.environ.get("CASCADE_CLIP_MODEL") or str(DEMO_MODEL)
    try:
        demo = build_demo(model_name, example_labels="cat, grass, sky")
    except INPUT_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    demo.launch()
