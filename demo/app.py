"""Entry point of the Hugging Face Space: `python demo/app.py` runs the same app locally.

The model comes from the CASCADE_CLIP_MODEL environment variable (a Hub id or a folder).
"""

import os

from cascade_clip_hf.demo import build_demo


if __name__ == "__main__":
    build_demo(
        os.environ.get("CASCADE_CLIP_MODEL", "org/cascade-clip-coco"), example_labels="cat, grass, sky"
    ).launch()
