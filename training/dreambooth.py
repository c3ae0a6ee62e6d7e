"""DreamBooth training over plain arguments: no Django, a progress callback and a cancel check.

The method (Ruiz et al. 2022) as diffusers' examples/dreambooth scripts implement it, written for
this project:

1. Load the base Stable Diffusion pipeline; build a DDPM noise schedule from its scheduler config
   (so v-prediction and the zero-terminal-SNR betas of the demo model carry over).
2. Optionally generate class images with the base model (prior preservation), cached on disk.
3. Encode the instance (and class) images once with the frozen VAE, and the prompts once with the
   text encoder when it stays frozen: each step then costs only the UNet.
4. Train: noise-prediction loss on the instance images, plus `prior_loss_weight` × the same loss on
   class images (towards the class image's own target, or the frozen base model's prediction:
   `prior_target`). LoRA (peft, on the UNet attention projections) or the whole UNet; optionally the
   rare token's embedding rows too (pivotal tuning). docs/dreambooth.md has the measurements.
5. Write the checkpoint at the very end, through a temporary name, so a cancel or a crash never
   leaves a half-written file.

Devices: float32 on the CPU. On a GPU: fp16/bf16 autocast, gradient checkpointing and
bitsandbytes' 8-bit AdamW when asked for (and installed).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from generation.modelinfo import describe_model

from .checkpoint_names import LORA_WEIGHT_NAME, TOKEN_EMBEDDING_NAME

logger = logging.getLogger(__name__)

TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
# The two 3×3 convolutions of every UNet resnet: LoRA there can draw a pattern inside a shape,
# which LoRA on attention alone learnt in about half the images on the demo model.
RESNET_CONV_TARGET_MODULES = ("conv1", "conv2")
# Models whose native size is at most this are "tiny" (the demo model): other defaults apply.
_TINY_RESOLUTION = 128


class TrainingCanceled(Exception):
    """Raised when `should_cancel()` returned True; nothing was written to the output folder."""


class TrainingError(RuntimeError):
    """A run that cannot go on, with a message a person can act on (shown as the job's error)."""


@dataclass(frozen=True)
class TrainingOptions:
    """Everything a training run can be asked for. `default_options_for(model)` fills it sensibly.

    Learning rates are per optimizer step; `resolution` is in pixels (square); `validation_every`
    is in steps (0: no validation images).
    """

    method: Literal["lora", "full"] = "lora"
    steps: int = 800
    learning_rate: float = 1e-4
    lora_rank: int = 4
    lora_alpha: float | None = None  # None: equal to the rank (scale 1)
    # UNet modules that get LoRA (peft suffix match): every attention projection by default;
    # RESNET_CONV_TARGET_MODULES adds the resnets' 3×3 convolutions (LyCORIS calls that LoCon).
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    # UNet blocks whose modules get LoRA (method "lora"), as name prefixes ("up_blocks",
    # "mid_block", "down_blocks.1") or top-level modules ("conv_out"); empty: every block. On the
    # demo model the decoder half alone drifts least but learns the subject's colours more than
    # its layout (docs/dreambooth.md).
    lora_blocks: tuple[str, ...] = ()
    # LoRA+ (Hayou et al. 2024): the LoRA's B matrices learn this many times faster than its A ones.
    lora_plus_ratio: float = 1.0
    train_text_encoder: bool = False
    text_encoder_learning_rate: float | None = None  # None: same as `learning_rate`
    # Pivotal tuning: also learn the input embedding of the rare token's pieces (only those rows of
    # the text encoder change), so prompts with the token get a key of their own for the UNet to
    # answer to. Saved beside the LoRA (TOKEN_EMBEDDING_NAME) and swapped in per job.
    train_token_embedding: bool = False
    token_learning_rate: float = 1e-3
    # Pivotal tuning in two phases: the first `token_warmup_steps` steps train the token's
    # embedding alone (the UNet and its prior loss wait), so the token first gets as near the
    # subject as the base model can draw it; the remaining `steps - token_warmup_steps` steps
    # train the LoRA with it. 0: one phase, everything together.
    token_warmup_steps: int = 0
    batch_size: int = 1
    prior_preservation: bool = True
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    # What the class half is trained towards: "images" is classic DreamBooth (the class image's
    # own noise/velocity target); "base" is the frozen base model's prediction on the same noisy
    # class latent (distillation), which is zero loss at the start and penalises exactly the drift
    # from the base, instead of asking the adapter to fit 40 particular images better than the base
    # does. LoRA runs get the base by switching the adapter off; full fine-tunes keep a frozen copy.
    prior_target: Literal["images", "base"] = "images"
    # With prior_target "base": this share of the class samples is paired with another prompt from
    # the class prompts and `prior_prompts`. The target is the base's own prediction, so any pairing
    # is a valid constraint, and the prior then covers every prompt, not only those with an image.
    # Measured on the demo model at 0.5: less drift (held-out -21 instead of -27 points) but much
    # less likeness (17% instead of 50%), so off by default.
    prior_remix_share: float = 0.0
    # Prompts for the class images, cycled (one per line in a form). Empty: class_prompt_pool()
    # builds them from the instance captions without the token, the model's own prompts
    # (`prior_prompts`) and the empty prompt.
    class_prompts: tuple[str, ...] = ()
    # Prompts typical of the base model (its imagesite.json "prior_prompts"): mixed into the class
    # prompts so the prior covers what people make with the model, not only the subject's class.
    prior_prompts: tuple[str, ...] = ()
    class_inference_steps: int = 25
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    use_8bit_adam: bool = False
    max_grad_norm: float = 1.0
    # Learning rates over the run: "constant", or "cosine" (after the token's warm-up, every rate
    # falls along a half cosine to zero at the last step; diffusers' `--lr_scheduler cosine`).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    seed: int = 0
    validation_every: int = 0
    validation_prompts: tuple[str, ...] = ()
    validation_inference_steps: int = 20
    resolution: int = 512
    device: str | None = None  # None: "cuda" when available, else "cpu"
    # CPU threads for torch during the run (None: leave torch's setting). On a shared 2-core box
    # one thread is ~10x faster than two fighting another busy process for the cores.
    cpu_threads: int | None = None


@dataclass(frozen=True)
class TrainingProgress:
    """One report to the progress callback.

    `phase` is "class_images" (generating prior-preservation images: step = images done) or
    "training" (step = optimizer steps done). `loss` is the step's total loss (mean squared error in
    the model's prediction space); `validation_images` are RGB PIL images at the model's resolution,
    one per validation prompt, only on validation steps.
    """

    phase: Literal["class_images", "training"]
    step: int
    total: int
    loss: float | None = None
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    validation_images: list[Image.Image] | None = None
    validation_prompts: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingResult:
    """What a finished run wrote and how it went.

    `checkpoint_path` is the LoRA `.safetensors` file (method "lora") or the folder holding `unet/`
    (and `text_encoder/` when trained) in diffusers layout (method "full"). `size_bytes` sums `files`.
    """

    method: str
    checkpoint_path: Path
    files: list[Path]
    size_bytes: int
    steps: int
    final_loss: float
    seconds_per_step: float
    seconds_total: float
    class_images_generated: int
    options: TrainingOptions = field(repr=False)


ProgressCallback = Callable[[TrainingProgress], None]


# --- options -----------------------------------------------------------------------------------


def model_resolution(base_model: str | Path) -> int:
    """Native image size in pixels (generation.modelinfo's reading of the model: unet sample_size
    × VAE downscale factor for a diffusers folder, 512 (SD 1.x) for anything else)."""
    return describe_model(str(base_model)).native_size


def default_options_for(base_model: str | Path, **overrides: Any) -> TrainingOptions:
    """Defaults that fit the base model, with `overrides` applied (any TrainingOptions field).

    Tiny models (the 64 px demo) take lr 3e-4 falling along a cosine, a rank-8 LoRA on the
    attention and resnet convolutions of the decoder half and the middle block (its B matrices at
    16x the rate: LoRA+), batch 4 and 2100 steps, the first 300 on the token's embedding alone:
    about 8-9 minutes on 2 CPU cores with prior preservation (150 class images, weight 6). Fewer
    `steps` shorten the token's warm-up with them (to a quarter of them at most) unless
    `token_warmup_steps` is given too. SD-sized models get the usual DreamBooth-LoRA recipe (rank
    4, 1e-4 constant, 800 steps, 100 class images, one phase, attention only, no LoRA+) and, on
    a GPU, fp16 with gradient checkpointing and 8-bit Adam when bitsandbytes is installed.
    `method="full"` lowers the learning rate (1e-4 on tiny models, 5e-6 on SD) unless
    `learning_rate` is given too.
    """
    info = describe_model(str(base_model))  # read once (cached) for the size and the prompts
    resolution, prior_prompts = info.native_size, info.prior_prompts
    full = overrides.get("method") == "full"
    if resolution <= _TINY_RESOLUTION:
        options = TrainingOptions(
            # LoRA: lr 3e-4 beat 1e-3 on the trained demo model (likeness up, class damage down;
            # 1e-3 saturates colours); 1e-4 × 2000 steps was no better and twice as long. A full
            # fine-tune at 3e-4 drifted 8 points on held-out prompts, at 1e-4 0.9 (likeness 83-94%).
            steps=2100, learning_rate=1e-4 if full else 3e-4, lora_rank=8, batch_size=4,
            num_class_images=150, class_inference_steps=20, resolution=resolution,
            # Two-phase pivotal tuning with a stronger, wider prior: the token first (300 steps at
            # 3e-3, ~0.1 s each), then 1800 LoRA steps against 150 class images.
            token_warmup_steps=300, token_learning_rate=3e-3,
            # The LoRA on the decoder half and the middle block (the layout) only, at prior weight
            # 6: likeness as with every block at weight 4 (56% vs 58%), half the drift on held-out
            # prompts (4.5 vs 8.0 points), 80 s faster. Measured in docs/dreambooth.md.
            lora_blocks=("up_blocks", "mid_block"), prior_loss_weight=6.0,
            # ...on their resnets' convolutions too, 200 steps fewer, the rates falling along a
            # cosine: likeness 51% -> 69% on the mean of five training seeds (66-78% each),
            # held-out drift 3.6 -> 2.9 points, 8.7 min (0.27 instead of 0.22 s per LoRA step).
            lora_target_modules=TrainingOptions.lora_target_modules + RESNET_CONV_TARGET_MODULES,
            lr_schedule="cosine",
            # LoRA+: the B matrices at 16x the rate (4.8e-3): likeness 69% -> 79% on the mean of
            # five training seeds, held-out drift 2.9 -> 3.2 points, same time.
            lora_plus_ratio=16.0,
            # Measured with bench/dreambooth_bench.py: the base-prediction prior kept held-out
            # prompts where they were (vs -42 points with the classic target) and the learnt
            # token embedding nearly doubled likeness; see docs/dreambooth.md.
            prior_target="base", train_token_embedding=True, prior_prompts=prior_prompts,
            # The embedded set-up runs a generation worker on the same cores; a tiny model gains
            # little from a second thread and loses ~10x when two processes spin for both cores.
            cpu_threads=None if torch.cuda.is_available() else 1,
        )
    else:
        cuda = torch.cuda.is_available()
        options = TrainingOptions(
            # A full fine-tune of SD takes diffusers' DreamBooth example rate, 5e-6.
            steps=800, learning_rate=5e-6 if full else 1e-4, lora_rank=4, batch_size=1, num_class_images=100,
            resolution=resolution, prior_prompts=prior_prompts, gradient_checkpointing=cuda,
            mixed_precision="fp16" if cuda else "no", use_8bit_adam=cuda and _bitsandbytes_installed(),
        )
    options = replace(options, **overrides)
    if "token_warmup_steps" not in overrides:
        options = replace(options, token_warmup_steps=min(options.token_warmup_steps, options.steps // 4))
    return options


def check_options(options: TrainingOptions) -> None:
    """Raise a concise ValueError for options no run could use."""
    if options.method not in ("lora", "full"):
        raise ValueError(f"method must be 'lora' or 'full', not {options.method!r}")
    if options.steps < 1:
        raise ValueError("steps must be at least 1")
    if not options.learning_rate > 0:
        raise ValueError("learning_rate must be positive")
    if options.method == "lora" and options.lora_rank < 1:
        raise ValueError("lora_rank must be at least 1")
    if not options.lora_plus_ratio > 0:
        raise ValueError("lora_plus_ratio must be positive (1: off)")
    if options.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if options.prior_preservation and options.num_class_images < 1:
        raise ValueError("prior preservation needs num_class_images of at least 1")
    if options.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError("mixed_precision must be 'no', 'fp16' or 'bf16'")
    if options.resolution < 8 or options.resolution % 8:
        raise ValueError("resolution must be a positive multiple of 8")
    if not 0 <= options.prior_remix_share <= 1:
        raise ValueError("prior_remix_share must be between 0 and 1")
    if options.prior_target not in ("images", "base"):
        raise ValueError("prior_target must be 'images' or 'base'")
    if options.lr_schedule not in ("constant", "cosine"):
        raise ValueError("lr_schedule must be 'constant' or 'cosine'")
    if options.validation_every < 0:
        raise ValueError("validation_every must be 0 (off) or a number of steps")
    if not 0 <= options.token_warmup_steps < options.steps:
        raise ValueError("token_warmup_steps must be at least 0 and less than steps")


def _bitsandbytes_installed() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or a CUDA-less build that fails on import
        return False
    return True


# --- prompts -----------------------------------------------------------------------------------


def instance_prompts_for(n_photos: int, captions: Sequence[str | None] | None, token: str, class_noun: str) -> list[str]:
    """One prompt per photo: its caption when given, else "a photo of <token> <class>"."""
    fallback = f"a photo of {token} {class_noun}"
    captions = list(captions or [])
    return [(captions[i] or "").strip() or fallback if i < len(captions) else fallback for i in range(n_photos)]


def class_prompt_for(instance_prompt: str, token: str, class_noun: str) -> str:
    """The class prompt paired with an instance prompt: the same caption without the token.

    "a sks shape on a red background" -> "a shape on a red background"; a caption that is only
    the fallback gives DreamBooth's "a photo of a <class>".
    """
    if instance_prompt == f"a photo of {token} {class_noun}":
        return f"a photo of a {class_noun}"
    without = re.sub(rf"\s*\b{re.escape(token)}\b\s*", " ", instance_prompt).strip()
    return re.sub(r"\s+", " ", without) or f"a photo of a {class_noun}"


# One class image in ten has the empty prompt: classifier-free guidance subtracts the model's
# unconditional prediction from every prompt's, so a subject that moved it would move them all.
EMPTY_PROMPT_SHARE = 0.1


def class_prompt_pool(instance_prompts: Sequence[str], token: str, class_noun: str, prior_prompts: Sequence[str], n: int, seed: int) -> list[str]:
    """The `n` prompts to make class images from, in order.

    A tenth are the empty prompt; the rest take turns from three lists, each cycled: the instance
    captions without the token, the model's own prompts that name the class ("a red square on a
    blue background" for class "square"), and its other prompts (shuffled with `seed`). Without
    `prior_prompts` (an SD checkpoint without imagesite.json) that is the captions alone.
    """
    own = list(dict.fromkeys(class_prompt_for(p, token, class_noun) for p in instance_prompts))
    shuffled = [prior_prompts[i] for i in np.random.default_rng(seed).permutation(len(prior_prompts))]
    names_class = re.compile(rf"\b{re.escape(class_noun.lower())}\b")
    same_class = [p for p in shuffled if names_class.search(p.lower())]
    others = [p for p in shuffled if not names_class.search(p.lower())]
    sources = [lst for lst in (own, same_class, others) if lst]
    n_empty = round(n * EMPTY_PROMPT_SHARE) if n > 1 else 0
    turns = [0] * len(sources)
    wanted = []
    for i in range(n - n_empty):
        k = i % len(sources)
        wanted.append(sources[k][turns[k] % len(sources[k])])
        turns[k] += 1
    return wanted + [""] * n_empty


# --- data --------------------------------------------------------------------------------------


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB PIL image -> float32 tensor (3, resolution, resolution) in [-1, 1] on the CPU.

    The shorter side is resized to `resolution` (Lanczos), then the centre is cropped.
    """
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@torch.no_grad()
def _encode_images(vae: Any, images: Sequence[Image.Image], resolution: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode images once with the frozen VAE: latent mean and std, each (N, 4, res/f, res/f), float32 on `device`."""
    means, stds = [], []
    for start in range(0, len(images), 8):
        pixels = torch.stack([image_to_tensor(im, resolution) for im in images[start:start + 8]])
        dist = vae.encode(pixels.to(device, dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def _sample_latents(vae: Any, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw latents from the cached VAE posterior and scale them as the UNet expects: (B, 4, h, w) float32."""
    noise = torch.randn(mean.shape, generator=generator).to(mean.device)
    latents = mean + std * noise
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return latents * vae.config.scaling_factor


def _tokenize(tokenizer: Any, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """Prompt strings -> token ids (N, model_max_length) on `device`, padded and truncated."""
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids.to(device)


class _Batches:
    """Endless shuffled batches of indices into N items (each epoch a new permutation)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self._queue: list[int] = []

    def next(self) -> list[int]:
        while len(self._queue) < self.batch_size:
            self._queue += torch.randperm(self.n, generator=self.generator).tolist()
        batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size:]
        return batch


# --- class images ------------------------------------------------------------------------------


def _load_class_images(folder: Path | None, wanted: Sequence[str]) -> tuple[list[tuple[Image.Image, str]], list[str], int]:
    """Reuse cached class images for the `wanted` prompts (one image per entry).

    A cached image is `class_NNNNN.png` with its prompt in `class_NNNNN.txt`. Returns the images
    found (RGB PIL, with their prompts), the prompts still to generate, and the next free index.
    """
    if folder is None or not folder.is_dir():
        return [], list(wanted), 0
    cached: dict[str, list[Path]] = {}
    next_index = 0
    for path in sorted(folder.glob("class_*.png")):
        caption = path.with_suffix(".txt")
        if caption.exists():
            cached.setdefault(caption.read_text().strip(), []).append(path)
        with contextlib.suppress(ValueError):
            next_index = max(next_index, int(path.stem.split("_")[1]) + 1)
    found, missing = [], []
    for prompt in wanted:
        if cached.get(prompt):
            with Image.open(cached[prompt].pop(0)) as im:
                found.append((im.convert("RGB"), prompt))
        else:
            missing.append(prompt)
    return found, missing, next_index


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _generate_class_images(
    pipe: Any, prompts: Sequence[str], *, start_index: int, options: TrainingOptions, folder: Path | None,
    progress: ProgressCallback, should_cancel: Callable[[], bool], done_before: int, total: int,
) -> list[tuple[Image.Image, str]]:
    """Generate one base-model image per prompt (batches of 4) and cache each as PNG + .txt in `folder`.

    Images are RGB PIL at the pipeline's default size. Generation is seeded per image
    (options.seed + index), so a rerun makes the same images. Cancel is checked between batches.
    """
    import io

    made: list[tuple[Image.Image, str]] = []
    for start in range(0, len(prompts), 4):
        if should_cancel():
            raise TrainingCanceled()
        chunk = list(prompts[start:start + 4])
        indices = [start_index + start + i for i in range(len(chunk))]
        generators = [torch.Generator("cpu").manual_seed(options.seed * 100_003 + i) for i in indices]
        images = pipe(
            chunk, num_inference_steps=options.class_inference_steps, generator=generators,
            height=options.resolution, width=options.resolution,
        ).images
        for index, image, prompt in zip(indices, images, chunk):
            made.append((image, prompt))
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                image.save(buf, "PNG")
                _write_atomically(folder / f"class_{index:05d}.txt", prompt.encode())
                _write_atomically(folder / f"class_{index:05d}.png", buf.getvalue())
        progress(TrainingProgress(phase="class_images", step=done_before + len(made), total=total))
    return made


# --- models ------------------------------------------------------------------------------------


def _load_pipeline(base_model: Any) -> Any:
    """A fresh float32 StableDiffusionPipeline on the CPU from a diffusers folder or a hub id.

    An already-loaded pipeline is used as is: it must be a private copy (its UNet gets trained),
    never the warm generation pipeline. Single-file checkpoints: load them with
    `from_single_file(..., config=...)` and pass the pipeline.
    """
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    if isinstance(base_model, DiffusionPipeline):
        return base_model
    path = Path(base_model)
    common: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False, "torch_dtype": torch.float32}
    if path.is_dir():
        pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, **common)
    elif path.suffix.lower() in (".ckpt", ".safetensors"):
        raise ValueError(
            f"{path.name} is a single checkpoint file: load it with from_single_file and a local "
            "config folder, and pass the pipeline"
        )
    else:
        pipe = StableDiffusionPipeline.from_pretrained(str(base_model), **common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _move(model: Any, device: torch.device, dtype: torch.dtype) -> None:
    """Move a model to `device`, casting only when its dtype differs (diffusers warns on every cast)."""
    if model.dtype != dtype:
        model.to(device, dtype)
    else:
        model.to(device)


def _make_optimizer(params: list[dict[str, Any]], options: TrainingOptions, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, 8-bit (bitsandbytes) when asked for on a GPU and installed; logs why when it is not."""
    if options.use_8bit_adam:
        if device.type != "cuda":
            logger.info("8-bit Adam needs a CUDA GPU; using torch AdamW on %s", device.type)
        else:
            try:
                import bitsandbytes as bnb

                return bnb.optim.AdamW8bit(params, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
            except Exception as exc:  # ImportError or a broken CUDA build
                logger.warning("8-bit Adam asked for but bitsandbytes is unusable (%s); using torch AdamW", exc)
    return torch.optim.AdamW(params, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)


def _lora_state_dicts(unet: Any, text_encoder: Any | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The LoRA weights as `save_lora_weights` takes them and `load_lora_weights` reads them back
    whole, float32 on the CPU.

    The UNet's keys stay in peft's layout (`lora_A`/`lora_B`) for every module. diffusers'
    `convert_state_dict_to_diffusers` renames only the attention projections (`lora.down`), and
    `load_lora_weights` judges the layout of a UNet LoRA by its first key: a file that mixed both
    loaded only the modules in the first key's layout and silently dropped the rest (e.g. every
    attention LoRA when the first key was a convolution's). The text encoder keeps diffusers' layout,
    which its loader converts as a whole.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}

    text = cpu(convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))) if text_encoder is not None else None
    return cpu(get_peft_model_state_dict(unet)), text


def _save_checkpoint(
    output_dir: Path, *, method: str, unet: Any, text_encoder: Any, train_text_encoder: bool,
    token_state: dict[str, torch.Tensor] | None, token: str,
) -> tuple[Path, list[Path]]:
    """Write the result under a temporary folder in `output_dir`, then move it into place.

    Returns the checkpoint path and every file written (the token embedding file, when there is
    one, first).
    """
    from diffusers import StableDiffusionPipeline

    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    extra: list[Path] = []
    try:
        if token_state is not None:
            save_token_embedding(token_state, staging / TOKEN_EMBEDDING_NAME, token)
            extra.append(output_dir / TOKEN_EMBEDDING_NAME)
            os.replace(staging / TOKEN_EMBEDDING_NAME, extra[0])
        if method == "lora":
            unet_layers, text_layers = _lora_state_dicts(unet, text_encoder if train_text_encoder else None)
            StableDiffusionPipeline.save_lora_weights(
                staging, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers,
                safe_serialization=True,
                unet_lora_adapter_metadata=_peft_metadata(unet),
                text_encoder_lora_adapter_metadata=_peft_metadata(text_encoder) if train_text_encoder else None,
            )
            target = output_dir / LORA_WEIGHT_NAME
            os.replace(staging / LORA_WEIGHT_NAME, target)
            return target, extra + [target]
        parts = [("unet", unet)] + ([("text_encoder", text_encoder)] if train_text_encoder else [])
        written: list[Path] = list(extra)
        for name, model in parts:
            model.to(torch.float32).save_pretrained(staging / name, safe_serialization=True)
            target = output_dir / name
            if target.exists():  # a rerun into the same folder: swap, then drop the old one
                old = output_dir / f".old-{name}-{uuid.uuid4().hex}"
                os.replace(target, old)
                os.replace(staging / name, target)
                shutil.rmtree(old)
            else:
                os.replace(staging / name, target)
            written += sorted(p for p in target.rglob("*") if p.is_file())
        return output_dir, written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _peft_metadata(model: Any) -> dict[str, Any] | None:
    """The adapter's LoraConfig as a JSON-able dict (rank, alpha, targets) stored in the file."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return None
    return json.loads(json.dumps(config.to_dict(), default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


# --- the run -----------------------------------------------------------------------------------


def train_dreambooth(
    *,
    base_model: str | Path | Any,
    instance_images: Sequence[Image.Image],
    token: str,
    class_noun: str,
    options: TrainingOptions,
    output_dir: Path,
    instance_prompts: Sequence[str | None] | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    class_images_dir: Path | None = None,
) -> TrainingResult:
    """Train a subject into the base model and write the checkpoint to `output_dir`.

    `base_model` is a diffusers folder, a hub id, or a private, freshly loaded
    StableDiffusionPipeline. `instance_images` are the subject's RGB photos (any size: resized and
    centre-cropped to `options.resolution`); `instance_prompts` one caption per photo
    ("a sks shape on a red background"), falling back to "a photo of <token> <class_noun>".
    `progress` is called after every step (and every batch of class images); `should_cancel` is
    polled before every step and raises TrainingCanceled when it returns True. Class images for prior
    preservation are read from, and topped up into, `class_images_dir` (None: kept in memory only).

    Returns a TrainingResult. Writes only `pytorch_lora_weights.safetensors` (LoRA) or `unet/`
    (+ `text_encoder/`) (full) into `output_dir`, all at the end.
    """
    check_options(options)
    if not instance_images:
        raise ValueError("at least one instance image is needed")
    threads_before = torch.get_num_threads()
    if options.cpu_threads:
        torch.set_num_threads(options.cpu_threads)
    try:
        return _train(
            base_model=base_model, instance_images=instance_images, token=token, class_noun=class_noun,
            options=options, output_dir=Path(output_dir), instance_prompts=instance_prompts,
            report=progress or (lambda p: None), cancel=should_cancel or (lambda: False),
            class_images_dir=class_images_dir,
        )
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(
            f"The GPU ran out of memory training at {options.resolution} px with batch size "
            f"{options.batch_size}; try gradient checkpointing, fp16, 8-bit Adam, LoRA instead of a "
            "full fine-tune, or a smaller batch."
        ) from None
    finally:
        torch.set_num_threads(threads_before)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _train(
    *, base_model: Any, instance_images: Sequence[Image.Image], token: str, class_noun: str,
    options: TrainingOptions, output_dir: Path, instance_prompts: Sequence[str | None] | None,
    report: ProgressCallback, cancel: Callable[[], bool], class_images_dir: Path | None,
) -> TrainingResult:
    """The body of `train_dreambooth` (same contract), run with the thread setting in place."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    started = time.perf_counter()
    torch.manual_seed(options.seed)  # LoRA init and dropout; data randomness has its own generator
    generator = torch.Generator("cpu").manual_seed(options.seed)

    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(options.mixed_precision, torch.float32)
    if device.type != "cuda" and weight_dtype != torch.float32:
        logger.info("mixed precision %s needs a CUDA GPU; training in float32", options.mixed_precision)
        weight_dtype = torch.float32

    # 1. Base model and the DDPM schedule it was trained with.
    pipe = _load_pipeline(base_model)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    vae, unet, text_encoder, tokenizer = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
    pipe.to(device)

    prompts = instance_prompts_for(len(instance_images), instance_prompts, token, class_noun)

    # 2. Class images for prior preservation, generated by the untouched base model.
    class_items: list[tuple[Image.Image, str]] = []
    generated = 0
    if options.prior_preservation:
        if options.class_prompts:
            pool = list(options.class_prompts)
            wanted = [pool[i % len(pool)] for i in range(options.num_class_images)]
        else:
            wanted = class_prompt_pool(prompts, token, class_noun, options.prior_prompts, options.num_class_images, options.seed)
        class_items, missing, next_index = _load_class_images(class_images_dir, wanted)
        if missing:
            report(TrainingProgress(phase="class_images", step=len(class_items), total=len(wanted)))
            class_items += _generate_class_images(
                pipe, missing, start_index=next_index, options=options, folder=class_images_dir,
                progress=report, should_cancel=cancel, done_before=len(class_items), total=len(wanted),
            )
            generated = len(missing)

    # 3. Freeze what does not train; cache latents (and text states if the encoder is frozen).
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.requires_grad_(False)
    _move(vae, device, weight_dtype)
    inst_mean, inst_std = _encode_images(vae, instance_images, options.resolution, device, weight_dtype)
    inst_ids = _tokenize(tokenizer, prompts, device)
    train_te = options.train_text_encoder
    # A fully fine-tuned text encoder trains every embedding row already.
    pivotal = options.train_token_embedding and not (train_te and options.method == "full")
    token_rows = _token_rows(tokenizer, token) if pivotal else []
    encode_each_step = train_te or bool(token_rows)
    distil = bool(class_items) and options.prior_target == "base"
    if class_items:
        class_mean, class_std = _encode_images(vae, [im for im, _ in class_items], options.resolution, device, weight_dtype)
        # Every prompt the class half may be paired with, once: the class images' own, plus (for
        # the base-prediction target) the model's prompts that `prior_remix_share` draws from.
        class_table = list(dict.fromkeys([p for _, p in class_items] + (list(options.prior_prompts) if distil else [])))
        row_of = {p: i for i, p in enumerate(class_table)}
        own_prompt = [row_of[p] for _, p in class_items]
        class_ids = _tokenize(tokenizer, class_table, device)
    if not encode_each_step or distil:  # frozen text states; the distillation target always needs the base's
        _move(text_encoder, device, weight_dtype)
        with torch.no_grad():
            inst_states = None if encode_each_step else text_encoder(inst_ids)[0]
            class_states = text_encoder(class_ids)[0] if class_items else None

    # A full fine-tune has no adapter to switch off: the distillation target comes from a frozen copy.
    teacher = copy.deepcopy(unet).to(device, weight_dtype).eval() if distil and options.method == "full" else None
    params = _prepare_trainable(unet, text_encoder, options, device, weight_dtype)
    # Two-phase pivotal tuning: the model's own weights (these groups) wait while the token's rows warm up.
    model_params = [p for group in params for p in group["params"]]
    warmup = options.token_warmup_steps if token_rows else 0
    if token_rows:
        params.append(_trainable_token_rows(text_encoder, token_rows, options, device, weight_dtype))
    optimizer = _make_optimizer(params, options, device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: _lr_factor(done, warmup, options))
    trainable = [p for group in params for p in group["params"]]
    autocast = (
        torch.autocast("cuda", dtype=weight_dtype) if device.type == "cuda" and weight_dtype != torch.float32
        else contextlib.nullcontext()
    )
    scaler = torch.amp.GradScaler("cuda") if weight_dtype == torch.float16 else None
    validation_pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=pipe.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    validation_pipe.set_progress_bar_config(disable=True)

    # 4. The loop: one optimizer step per iteration.
    inst_batches = _Batches(len(instance_images), options.batch_size, generator)
    class_batches = _Batches(len(class_items), options.batch_size, generator) if class_items else None
    unet.train()
    if train_te:
        text_encoder.train()
    train_seconds, warmup_seconds, loss_value, loss_ema = 0.0, 0.0, float("nan"), None
    for step in range(1, options.steps + 1):
        if cancel():
            raise TrainingCanceled()
        step_start = time.perf_counter()
        warming = step <= warmup
        if warmup and step in (1, warmup + 1):
            for p in model_params:  # no gradient, so AdamW leaves them (and their moments) alone
                p.requires_grad_(not warming)
        with_prior = class_batches is not None and not warming  # the token is in no class prompt
        idx = inst_batches.next()
        latents = _sample_latents(vae, inst_mean[idx], inst_std[idx], generator)
        ids = inst_ids[idx]
        states = None if encode_each_step else inst_states[idx]
        if with_prior:
            cidx = class_batches.next()
            latents = torch.cat([latents, _sample_latents(vae, class_mean[cidx], class_std[cidx], generator)])
            pidx = [own_prompt[i] for i in cidx]
            if distil:
                pidx = _remix(pidx, len(class_table), options.prior_remix_share, generator)
            ids = torch.cat([ids, class_ids[pidx]])
            states = None if encode_each_step else torch.cat([states, class_states[pidx]])

        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise TrainingError(f"This model's prediction type {prediction_type!r} is not supported for training.")

        if distil and with_prior:  # the class half's target becomes the base model's own prediction
            n = len(idx)
            base = _base_prediction(unet if teacher is None else teacher, noisy[n:], timesteps[n:], class_states[pidx], weight_dtype, autocast)
            target = torch.cat([target[:n], base])
        with autocast:
            if encode_each_step:
                states = text_encoder(ids)[0]
            pred = unet(noisy.to(weight_dtype), timesteps, states.to(weight_dtype)).sample
        loss = _dreambooth_loss(pred.float(), target.float(), with_prior, options.prior_loss_weight)

        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if options.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, options.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()

        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"Training diverged (the loss became {loss_value} at step {step}); try a lower learning rate"
                + (" or bf16 instead of fp16" if weight_dtype == torch.float16 else "") + "."
            )
        loss_ema = loss_value if loss_ema is None else 0.95 * loss_ema + 0.05 * loss_value
        train_seconds += time.perf_counter() - step_start
        per_step = train_seconds / step
        if step == warmup:
            warmup_seconds = train_seconds
        # After the token's warm-up the steps are ~2x slower: the ETA uses this phase's pace only.
        pace = (train_seconds - warmup_seconds) / (step - warmup) if step > warmup else per_step

        images = None
        if options.validation_every and options.validation_prompts and (step % options.validation_every == 0 or step == options.steps):
            images = _validation_images(validation_pipe, unet, text_encoder, train_te, options, autocast)
        report(TrainingProgress(
            phase="training", step=step, total=options.steps, loss=loss_value, seconds_per_step=per_step,
            eta_seconds=pace * (options.steps - step), validation_images=images,
            validation_prompts=options.validation_prompts if images else (),
        ))

    # 5. Write the checkpoint, all at once.
    unet.eval()
    text_encoder.eval()
    checkpoint, files = _save_checkpoint(
        Path(output_dir), method=options.method, unet=unet, text_encoder=text_encoder, train_text_encoder=train_te,
        token_state=token_embedding_state(text_encoder, token_rows) if token_rows else None, token=token,
    )
    return TrainingResult(
        method=options.method, checkpoint_path=checkpoint, files=files,
        size_bytes=sum(f.stat().st_size for f in files), steps=options.steps,
        final_loss=float(loss_ema if loss_ema is not None else loss_value), seconds_per_step=train_seconds / options.steps,
        seconds_total=time.perf_counter() - started, class_images_generated=generated, options=options,
    )


def _lr_factor(done: int, warmup: int, options: TrainingOptions) -> float:
    """The learning rates' multiplier for the step after `done` steps: 1 throughout for
    "constant"; for "cosine" 1 during the token's warm-up, then a half cosine to 0 at the last step."""
    if options.lr_schedule == "constant" or done < warmup:
        return 1.0
    span = max(options.steps - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(done - warmup, span) / span))


def _remix(own: list[int], n_prompts: int, share: float, generator: torch.Generator) -> list[int]:
    """Prompt indices for a class batch: each sample keeps its own prompt, or with probability
    `share` takes a random one of the `n_prompts`."""
    swap = torch.rand(len(own), generator=generator) < share
    other = torch.randint(0, n_prompts, (len(own),), generator=generator)
    return [int(o) if s else p for s, o, p in zip(swap, other, own)]


@torch.no_grad()
def _base_prediction(unet: Any, noisy: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor, weight_dtype: torch.dtype, autocast: Any) -> torch.Tensor:
    """What the untouched base model predicts: `unet` with its LoRA switched off, or a frozen copy."""
    adapters = getattr(unet, "peft_config", None) is not None
    if adapters:
        unet.disable_adapters()
    try:
        with autocast:
            return unet(noisy.to(weight_dtype), timesteps, states.to(weight_dtype)).sample.float()
    finally:
        if adapters:
            unet.enable_adapters()


def _dreambooth_loss(pred: torch.Tensor, target: torch.Tensor, with_prior: bool, prior_weight: float) -> torch.Tensor:
    """MSE between prediction and target, (B, C, h, w) float32 each; with prior preservation the
    batch is [instance; class] halves and the class half's MSE is added times `prior_weight`."""
    if not with_prior:
        return F.mse_loss(pred, target)
    pred_inst, pred_class = pred.chunk(2)
    target_inst, target_class = target.chunk(2)
    return F.mse_loss(pred_inst, target_inst) + prior_weight * F.mse_loss(pred_class, target_class)


def _prepare_trainable(unet: Any, text_encoder: Any, options: TrainingOptions, device: torch.device, weight_dtype: torch.dtype) -> list[dict[str, Any]]:
    """Attach LoRA adapters or unfreeze the UNet (and text encoder); return optimizer param groups.

    Trainable weights are float32 on `device` even under mixed precision (frozen base weights of a
    LoRA run are cast to `weight_dtype`), so the optimizer never steps in half precision.
    """
    from peft import LoraConfig, inject_adapter_in_model

    alpha = options.lora_alpha or options.lora_rank
    te_lr = options.text_encoder_learning_rate or options.learning_rate
    if options.method == "lora":
        _move(unet, device, weight_dtype)
        unet.add_adapter(LoraConfig(
            r=options.lora_rank, lora_alpha=alpha, init_lora_weights="gaussian",
            target_modules=_unet_lora_targets(unet, options),
        ))
        if options.train_text_encoder:
            _move(text_encoder, device, weight_dtype)
            # peft directly: transformers 5's `add_adapter` insists on a newer peft than we pin.
            inject_adapter_in_model(LoraConfig(
                r=options.lora_rank, lora_alpha=alpha, init_lora_weights="gaussian",
                target_modules=TEXT_ENCODER_TARGET_MODULES,
            ), text_encoder)
    else:
        _move(unet, device, torch.float32)
        unet.requires_grad_(True)
        if options.train_text_encoder:
            _move(text_encoder, device, torch.float32)
            text_encoder.requires_grad_(True)
    models = [unet] + ([text_encoder] if options.train_text_encoder else [])
    for model in models:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if options.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if options.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    groups = _param_groups(unet, options.learning_rate, options.lora_plus_ratio)
    if options.train_text_encoder:
        groups += _param_groups(text_encoder, te_lr, options.lora_plus_ratio)
    return groups


def _param_groups(model: Any, lr: float, lora_plus_ratio: float) -> list[dict[str, Any]]:
    """The model's trainable weights as optimizer groups: one at `lr`, or, with LoRA+ (Hayou et al.
    2024; `lora_plus_ratio` != 1), the LoRA's B matrices in a second group at `lr * lora_plus_ratio`.
    B starts at zero and is what turns the A projection into a change of the output, so a faster B
    learns the same update in fewer steps. (peft's `create_loraplus_optimizer` does this for a
    single model and optimizer class; a run here trains up to three and may use 8-bit AdamW.)"""
    fast: list[torch.nn.Parameter] = []
    rest: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (fast if lora_plus_ratio != 1.0 and ".lora_B." in name else rest).append(p)
    return [{"params": rest, "lr": lr}] + ([{"params": fast, "lr": lr * lora_plus_ratio}] if fast else [])


def _unet_lora_targets(unet: Any, options: TrainingOptions) -> list[str]:
    """peft target_modules for the UNet: the suffixes as they are, or, with `lora_blocks`, the full
    names of the modules inside those blocks (or a block itself, e.g. "conv_out") that peft would
    match with the suffixes."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    suffixes = list(options.lora_target_modules)
    if not options.lora_blocks:
        return suffixes
    by_suffix = LoraConfig(target_modules=suffixes)
    blocks = tuple(block.rstrip(".") for block in options.lora_blocks)
    prefixes = tuple(block + "." for block in blocks)
    names = [
        name for name, _ in unet.named_modules()
        if (name in blocks or name.startswith(prefixes)) and check_target_module_exists(by_suffix, name)
    ]
    if not names:
        raise ValueError(f"no LoRA target modules in the UNet blocks {', '.join(options.lora_blocks)}")
    return names


def _token_rows(tokenizer: Any, token: str) -> list[int]:
    """The embedding rows (token ids) the rare token is spelt with, e.g. "sks" -> [48136]."""
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"the token {token!r} tokenizes to nothing")
    return list(dict.fromkeys(ids))


def _trainable_token_rows(text_encoder: Any, rows: list[int], options: TrainingOptions, device: torch.device, weight_dtype: torch.dtype) -> dict[str, Any]:
    """Make the text encoder's input embedding trainable in `rows` only; return its param group.

    The rest of the matrix gets zero gradient (a hook) and no weight decay, so AdamW leaves it
    bit-identical; only the token's rows move.
    """
    _move(text_encoder, device, weight_dtype)
    weight = text_encoder.get_input_embeddings().weight
    weight.data = weight.data.float()
    weight.requires_grad_(True)
    keep = torch.zeros(weight.shape[0], 1, device=weight.device)
    keep[rows] = 1.0
    weight.register_hook(lambda grad: grad * keep)
    return {"params": [weight], "lr": options.token_learning_rate, "weight_decay": 0.0}


def token_embedding_state(text_encoder: Any, rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """The rows to ship: {"token_ids": (n,) int64, "embeddings": (n, dim) float32} on the CPU."""
    weight = text_encoder.get_input_embeddings().weight
    ids = torch.tensor(list(rows), dtype=torch.int64)
    return {"token_ids": ids, "embeddings": weight.detach()[ids.to(weight.device)].to("cpu", torch.float32).contiguous()}


def save_token_embedding(state: dict[str, torch.Tensor], path: Path, token: str) -> None:
    """Write the rows as a textual-inversion file: one tensor, `emb_params` (n, dim), which
    diffusers' `load_textual_inversion(path, token="<sks>")` and A1111 read; the token and the
    rows it replaces go in the metadata for `load_token_embedding`."""
    from safetensors.torch import save_file

    ids = ",".join(str(int(i)) for i in state["token_ids"])
    save_file({"emb_params": state["embeddings"]}, str(path), metadata={"token": token, "token_ids": ids})


def load_token_embedding(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a TOKEN_EMBEDDING_NAME file back into token_embedding_state's format."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        ids = (f.metadata() or {}).get("token_ids", "")
        if list(f.keys()) != ["emb_params"] or not ids:
            raise ValueError(f"{Path(path).name} is not a token embedding written by a training run")
        embeddings = f.get_tensor("emb_params")
    token_ids = torch.tensor([int(i) for i in ids.split(",")], dtype=torch.int64)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(token_ids):
        raise ValueError(f"{Path(path).name} does not hold one embedding per token piece")
    return {"token_ids": token_ids, "embeddings": embeddings.float()}


@torch.no_grad()
def swap_token_embedding(text_encoder: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write `state`'s rows into the text encoder's input embedding; return the rows it replaced
    (same format), so `swap_token_embedding(te, previous)` restores the base exactly."""
    weight = text_encoder.get_input_embeddings().weight
    ids = state["token_ids"].to(weight.device)
    if state["embeddings"].shape[1] != weight.shape[1] or int(ids.max()) >= weight.shape[0]:
        raise ValueError("the token embedding does not fit this model's text encoder")
    previous = {"token_ids": state["token_ids"].clone(), "embeddings": weight[ids].to("cpu").clone()}
    weight[ids] = state["embeddings"].to(weight.device, weight.dtype)
    return previous


def _validation_images(pipe: Any, unet: Any, text_encoder: Any, train_te: bool, options: TrainingOptions, autocast: Any) -> list[Image.Image]:
    """Sample one image per validation prompt with the weights as they are now (fixed seed, so
    images are comparable across steps): RGB PIL at `options.resolution`."""
    unet.eval()
    text_encoder.eval()
    try:
        with autocast, torch.no_grad():
            return list(pipe(
                list(options.validation_prompts), num_inference_steps=options.validation_inference_steps,
                generator=torch.Generator("cpu").manual_seed(options.seed),
                height=options.resolution, width=options.resolution,
            ).images)
    finally:
        unet.train()
        if train_te:
            text_encoder.train()
