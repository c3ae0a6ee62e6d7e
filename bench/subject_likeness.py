"""The DreamBooth bench's likeness check on a subject the app trained (a run's stored files).

    .venv/bin/python bench/subject_likeness.py media/subjects/<owner>/<subject>/runs/<run> [--seeds 16]

For the bench's subject (bench/dreambooth_bench.py: the yellow/purple 2×2 checkered square, token
"sks", class "square") uploaded through the pages or the API and trained there: loads the run's
LoRA (or fine-tuned UNet) and token file onto the demo model, as the worker does, and prints the bench's likeness rates
over "a sks square on a <colour> background". So a run made through the app can be compared with
the bench's own runs at the same training seed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dreambooth_bench import PHOTO_BACKGROUNDS, attach_subject, draw_subject, likeness  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the run's folder: its LoRA file (or unet/ for a full fine-tune) and the token file")
    p.add_argument("--model", type=Path, default=ROOT / "generation" / "demo_model")
    p.add_argument("--seeds", type=int, default=16, help="images per background")
    p.add_argument("--cells", type=int, default=2, help="checkerboard cells per side of the photos' subject")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from diffusers import StableDiffusionPipeline

    defaults = json.loads((a.model / "imagesite.json").read_text())
    pipe = StableDiffusionPipeline.from_pretrained(a.model, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    attach_subject(pipe, a.run)
    rng = np.random.default_rng(0)  # the bench's photos, for the histogram score
    photos = [np.asarray(draw_subject(bg, rng, a.cells)) for bg in PHOTO_BACKGROUNDS]
    rates = likeness(pipe, photos, a.seeds, float(defaults["guidance_scale"]), int(defaults["steps"]))
    print(f"run {a.run}")
    for name in ("checkered", "both colours", "histogram", "background"):
        print(f"  {name:<14} {rates[name]:6.1%}")


if __name__ == "__main__":
    main()
