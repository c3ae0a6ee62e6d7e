"""What a training run can be asked for, its defaults per base model and method, and their check.

No torch here, at import or inside any default: the web process builds the training form and
checks a user's choices with this module (`method_defaults`), reading only the model's config
files. The few defaults that depend on the machine that trains (MACHINE_FIELDS: fp16, gradient
checkpointing, 8-bit Adam, CPU threads) are decided on the worker by
`devices.default_options_for` (torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from generation.modelinfo import describe_model

FAMILIES = ("sd1", "sd2", "sdxl")

# The two 3×3 convolutions of every UNet resnet: LoRA there can draw a pattern inside a shape,
# which LoRA on attention alone learnt in about half the images on the demo model.
RESNET_CONV_TARGET_MODULES = ("conv1", "conv2")
# Models whose native size is at most this are "tiny" (the demo model): other defaults apply.
_TINY_RESOLUTION = 128
# Options whose default depends on the training machine's GPU (and libraries), not on the model
# or the method: left at the dataclass's neutral values by `method_defaults`.
MACHINE_FIELDS = ("mixed_precision", "gradient_checkpointing", "use_8bit_adam", "cpu_threads", "device")


@dataclass(frozen=True)
class TrainingOptions:
    """Everything a training run can be asked for. `default_options_for(model)` fills it sensibly.

    Learning rates are per optimizer step; `resolution` is in pixels (square); `validation_every`
    is in steps (0: no validation images).
    """

    method: Literal["lora", "full"] = "lora"
    # The base model's family ("sd1", "sd2", "sdxl"): set by `method_defaults` from the model's
    # files, never a user's choice. The loop reads the family from the loaded pipeline; this copy
    # lets `check_options` refuse what a family cannot do before a run is queued.
    family: str = "sd1"
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


def model_resolution(base_model: str | Path) -> int:
    """Native image size in pixels (a folder's unet sample_size × VAE downscale factor; a single
    file's family's size; 512 for a hub id)."""
    return _native_size(base_model)


def is_tiny_model(base_model: str | Path) -> bool:
    """Whether the model is as small as the demo model (native size at most 128 px)."""
    return model_resolution(base_model) <= _TINY_RESOLUTION


def model_family(base_model: str | Path) -> str:
    """"sd1", "sd2" or "sdxl" (SD 2.x 512 and 768-v alike), read from the model's files without
    torch: generation.families' detection (a folder's configs, a single file's keys), or, for a
    model it cannot place, the folder's model_index.json (a pipeline class with "XL" in its name
    is SDXL, anything else SD 1.x); the loop refuses what it cannot train when it loads it."""
    from generation.errors import GenerationError
    from generation.families import detect_family

    try:
        key = detect_family(str(base_model)).key
    except GenerationError:
        index = _read_json(Path(base_model) / "model_index.json")
        key = "sdxl" if "XL" in str(index.get("_class_name", "")) else "sd1"
    return {"sd2v": "sd2"}.get(key, key)


def _native_size(base_model: str | Path) -> int:
    """The model's native size in px: its folder's configs (describe_model), or, for a single file,
    its family's (SDXL 1024, SD 2.x 768-v 768, else 512)."""
    info = describe_model(str(base_model))
    if info.kind == "folder":
        return info.native_size
    from generation.errors import GenerationError
    from generation.families import detect_family

    try:
        return detect_family(str(base_model)).native_size
    except GenerationError:
        return info.native_size


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def method_defaults(base_model: str | Path, method: str = "lora", **overrides: Any) -> TrainingOptions:
    """The defaults that fit the base model and the method, with `overrides` applied (any
    TrainingOptions field). Torch-free: reads the model's config files only, so the web process
    may call it (the form's displayed defaults, the check of a user's choices).

    The MACHINE_FIELDS keep their neutral values (float32, no gradient checkpointing, torch's
    AdamW, torch's threads) unless overridden: `devices.default_options_for` decides them on the
    worker.

    Tiny models (the 64 px demo) take lr 3e-4 falling along a cosine, a rank-8 LoRA on the
    attention and resnet convolutions of the decoder half and the middle block (its B matrices at
    16x the rate: LoRA+), batch 4 and 2100 steps, the first 300 on the token's embedding alone:
    about 8-9 minutes on 2 CPU cores with prior preservation (150 class images, weight 6). Fewer
    `steps` shorten the token's warm-up with them (to a quarter of them at most) unless
    `token_warmup_steps` is given too. SD-sized models get the usual DreamBooth-LoRA recipe (rank
    4, 1e-4 constant, 800 steps, 100 class images, one phase, attention only, no LoRA+).
    `method="full"` lowers the learning rate (1e-4 on tiny models, 5e-6 on SD) unless
    `learning_rate` is given too. SDXL, whatever its size, gets its anchors' recipe
    (`_sdxl_defaults`: a rank-16 attention LoRA, 1e-4 constant, 500 steps, batch 1, native size,
    text encoders frozen, no pivotal tuning unless asked for).
    """
    resolution, prior_prompts = _native_size(base_model), describe_model(str(base_model)).prior_prompts
    family = model_family(base_model)
    full = method == "full"
    if family == "sdxl":
        options = _sdxl_defaults(full, resolution, prior_prompts)
    elif resolution <= _TINY_RESOLUTION:
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
        )
    else:
        options = TrainingOptions(
            # A full fine-tune of SD takes diffusers' DreamBooth example rate, 5e-6.
            steps=800, learning_rate=5e-6 if full else 1e-4, lora_rank=4, batch_size=1, num_class_images=100,
            resolution=resolution, prior_prompts=prior_prompts,
        )
    options = replace(options, method=method, family=family, **overrides)
    if "token_warmup_steps" not in overrides:
        options = replace(options, token_warmup_steps=min(options.token_warmup_steps, options.steps // 4))
    return options


def _sdxl_defaults(full: bool, resolution: int, prior_prompts: tuple[str, ...]) -> TrainingOptions:
    """SDXL's recipe, after its anchors (diffusers examples/dreambooth/README_sdxl.md and
    train_dreambooth_lora_sdxl.py; kohya sd-scripts docs/sdxl_train_network.md; OneTrainer
    training_presets/#sdxl 1.0 LoRA.json)."""
    return TrainingOptions(
        # LoRA on the UNet's attention projections (to_q/k/v/out.0: diffusers' SDXL script) in
        # every block, the text encoders frozen (all three anchors' default; kohya needs that to cache
        # the encoders' outputs, which is what keeps both encoders off the GPU during the steps).
        # Rank 16 (OneTrainer's preset; diffusers' script defaults to 4, kohya's example 32), alpha =
        # rank so lr 1e-4 means what it does in diffusers' and kohya's examples (both 1e-4, constant);
        # 500 steps at batch 1 (diffusers' README: 500 steps, batch 1).
        steps=500, learning_rate=5e-6 if full else 1e-4, lora_rank=16, batch_size=1,
        # 100 class images (diffusers' --num_class_images default), 25 steps each.
        num_class_images=100, class_inference_steps=25,
        # The native size (1024 on SDXL): every anchor trains SDXL at 1024 px.
        resolution=resolution, prior_prompts=prior_prompts,
        # No pivotal tuning by default (none of the three anchors' SDXL LoRA recipes learns the
        # token's embedding); asked for, it learns the token's rows in both encoders.
        train_token_embedding=False, train_text_encoder=False,
    )


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
    if options.family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {options.family!r}")
    if options.family == "sdxl" and options.method == "full" and options.train_text_encoder:
        raise ValueError("a full fine-tune of SDXL trains the UNet only; use method 'lora' to train the text encoders")

