"""Full-size Stable Diffusion models with random weights, built from the configs the project ships
(generation/<family>_config): the real shapes, layouts and file sizes, no download. Random weights
prove loading, memory and mechanics, never image quality. Used by bench/realscale.py (CPU) and
bench/gpu_check.py (built on the GPU: seconds instead of minutes)."""
from __future__ import annotations

import json
from pathlib import Path


def save_random_model(config: Path, out: Path, device: str = "cpu") -> None:
    """Build the pipeline `config/model_index.json` describes with seeded random fp16 weights and
    save it to `out` as a diffusers folder (safetensors)."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    index = json.loads((config / "model_index.json").read_text())
    parts: dict = {}
    for name, spec in index.items():
        if not (isinstance(spec, list) and spec[0]):
            continue
        class_name = spec[1]
        torch.manual_seed(0)
        with torch.device(device):
            if name in ("unet", "vae"):
                cls = getattr(diffusers, class_name)
                parts[name] = cls.from_config(cls.load_config(config / name)).half()
            elif name.startswith("text_encoder"):
                cls = CLIPTextModelWithProjection if class_name == "CLIPTextModelWithProjection" else CLIPTextModel
                parts[name] = cls(CLIPTextConfig.from_pretrained(config / name)).half()
        if name.startswith("tokenizer"):
            parts[name] = CLIPTokenizer.from_pretrained(config / name)
        elif name == "scheduler":
            cls = getattr(diffusers, class_name)
            parts[name] = cls.from_config(cls.load_config(config / name))
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} if "safety_checker" in index else {}
    pipe = getattr(diffusers, index["_class_name"])(**parts, **extra)
    pipe.to("cpu").save_pretrained(out, safe_serialization=True)
