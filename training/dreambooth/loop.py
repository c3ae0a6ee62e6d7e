"""The training run: `train_dreambooth` and its numbered steps, over plain arguments.

No Django: a progress callback and a cancel check. The package docstring (`__init__.py`) tells
the method; the pieces each step uses live beside this module (prompts, data, sampling, lora,
objective, checkpoints, devices).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .checkpoints import _save_checkpoint, token_embedding_state
from .conditioning import TextConditioning
from .data import _Batches, _encode_images, _sample_latents, size_conditions
from .devices import _make_optimizer, _move, lower_memory_options, out_of_memory_advice, training_device
from .lora import _prepare_trainable, _token_rows, _trainable_token_rows
from .objective import _base_prediction, _dreambooth_loss, _lr_factor, _remix
from .options import TrainingOptions, check_options
from .progress import ProgressCallback, TrainingCanceled, TrainingError, TrainingProgress, TrainingResult
from .prompts import class_prompt_pool, instance_prompts_for
from .sampling import (
    _generate_class_images, _load_class_images, _load_pipeline, _validation_images, validation_embeddings,
)

logger = logging.getLogger(__name__)

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

    `base_model` is an SD 1.x, SD 2.x or SDXL model: a diffusers folder, a single
    `.safetensors`/`.ckpt` file (converted once into a cached folder: the "preparing_model" phase),
    a hub id, or a private, freshly loaded StableDiffusion(XL)Pipeline. `instance_images` are the subject's RGB photos (any size: resized and
    centre-cropped to `options.resolution`); `instance_prompts` one caption per photo
    ("a sks shape on a red background"), falling back to "a photo of <token> <class_noun>".
    `progress` is called after every step (and every batch of class images); `should_cancel` is
    polled before every step and raises TrainingCanceled when it returns True. Class images for prior
    preservation are read from, and topped up into, `class_images_dir` (None: kept in memory only).

    A GPU out-of-memory starts the run once more with every lower-memory setting (the progress
    says so in a message); a second one is a TrainingError naming the knobs left.

    Returns a TrainingResult (its `options` are the ones the run finished with). Writes only the
    LoRA file (kohya layout, checkpoints.py) and the token's embedding, or `unet/`
    (+ `text_encoder/`) (full), into `output_dir`, all at the end.
    """
    check_options(options)
    if not instance_images:
        raise ValueError("at least one instance image is needed")
    threads_before = torch.get_num_threads()
    if options.cpu_threads:
        torch.set_num_threads(options.cpu_threads)
    try:
        return _train_retrying_once(
            base_model=base_model, instance_images=instance_images, token=token, class_noun=class_noun,
            options=options, output_dir=Path(output_dir), instance_prompts=instance_prompts,
            report=progress or (lambda p: None), cancel=should_cancel or (lambda: False),
            class_images_dir=class_images_dir,
        )
    finally:
        torch.set_num_threads(threads_before)
        _free_memory()


def _train_retrying_once(*, base_model: Any, options: TrainingOptions, report: ProgressCallback, **run: Any) -> TrainingResult:
    """`_train`, and on a GPU out-of-memory once more with every lower-memory setting
    (`lower_memory_options`), which the progress (a message) and the log say; a second
    out-of-memory is a TrainingError naming the knobs left. A pipeline passed in was changed in
    place by the first try, so only a model given by its path is retried."""
    try:
        return _train(base_model=base_model, options=options, report=report, low_memory=False, **run)
    except torch.cuda.OutOfMemoryError:
        if not isinstance(base_model, (str, Path)):
            raise TrainingError(
                f"The GPU ran out of memory training at {options.resolution} px with batch size "
                f"{options.batch_size}; try gradient checkpointing, fp16, 8-bit Adam, LoRA instead of a "
                "full fine-tune, or a smaller batch."
            ) from None
    # Outside the except block, so the failed try's tensors (held by its traceback) are freed first.
    _free_memory()
    lower, changes = lower_memory_options(options)
    settings = ", ".join(changes + ["class images one at a time"])
    message = f"The GPU ran out of memory; starting again with {settings}."
    logger.warning("training run out of GPU memory at %d px: retrying with %s", options.resolution, settings)
    report(TrainingProgress(phase="training", step=0, total=lower.steps, message=message))
    try:
        return _train(base_model=base_model, options=lower, report=report, low_memory=True, **run)
    except torch.cuda.OutOfMemoryError:
        pass
    raise TrainingError(
        f"The GPU ran out of memory training at {lower.resolution} px, even after starting again with "
        f"{settings}. Try {out_of_memory_advice(lower)}."
    )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train(
    *, base_model: Any, instance_images: Sequence[Image.Image], token: str, class_noun: str,
    options: TrainingOptions, output_dir: Path, instance_prompts: Sequence[str | None] | None,
    report: ProgressCallback, cancel: Callable[[], bool], class_images_dir: Path | None, low_memory: bool,
) -> TrainingResult:
    """The body of `train_dreambooth` (same contract), run with the thread setting in place.
    `low_memory`: the out-of-memory retry (class images one at a time, with model CPU offload and VAE
    tiling: `sampling._class_image_plan`; no attention slicing, which SDPA makes needless)."""
    from diffusers import DDPMScheduler

    started = time.perf_counter()
    torch.manual_seed(options.seed)  # LoRA init and dropout; data randomness has its own generator
    generator = torch.Generator("cpu").manual_seed(options.seed)

    device = training_device(options)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(options.mixed_precision, torch.float32)
    if device.type != "cuda" and weight_dtype != torch.float32:
        logger.info("mixed precision %s needs a CUDA GPU; training in float32", options.mixed_precision)
        weight_dtype = torch.float32

    # 1. Base model (any supported family), its text side and the DDPM schedule it was trained with.
    pipe = _load_pipeline(base_model, report)
    text = TextConditioning(pipe)
    if text.is_xl:
        check_options(replace(options, family="sdxl"))  # what SDXL cannot do, whatever the options said
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    vae, unet, encoders = pipe.vae, pipe.unet, text.text_encoders
    resolution = options.resolution

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
                device=device, dtype=torch.bfloat16 if weight_dtype == torch.bfloat16 else torch.float16,
                low_memory=low_memory,
            )
            generated = len(missing)

    # 3. Freeze what does not train; cache latents (and text states if the encoders are frozen).
    for model in (vae, unet, *encoders):
        model.requires_grad_(False)
    # SDXL's VAE overflows in fp16: float32, as diffusers' SDXL script and kohya's --no_half_vae keep it.
    vae_dtype = torch.float32 if getattr(vae.config, "force_upcast", False) else weight_dtype
    _move(vae, device, vae_dtype)
    chunk = 8 if device.type != "cuda" else (4 if resolution <= 512 else 1)
    inst_mean, inst_std = _encode_images(vae, instance_images, resolution, device, vae_dtype, chunk)
    inst_sizes = size_conditions(instance_images, resolution).to(device) if text.is_xl else None
    inst_ids = text.tokenize(prompts, device)
    train_te = options.train_text_encoder
    # A fully fine-tuned text encoder trains every embedding row already.
    pivotal = options.train_token_embedding and not (train_te and options.method == "full")
    token_rows = _token_rows(pipe.tokenizer, token) if pivotal else []
    if token_rows and text.is_xl and _token_rows(pipe.tokenizer_2, token) != token_rows:
        raise ValueError(f"the token {token!r} is spelt differently by SDXL's two tokenizers")
    encode_each_step = train_te or bool(token_rows)
    distil = bool(class_items) and options.prior_target == "base"
    if class_items:
        class_images = [im for im, _ in class_items]
        class_mean, class_std = _encode_images(vae, class_images, resolution, device, vae_dtype, chunk)
        class_sizes = size_conditions(class_images, resolution).to(device) if text.is_xl else None
        # Every prompt the class half may be paired with, once: the class images' own, plus (for
        # the base-prediction target) the model's prompts that `prior_remix_share` draws from.
        class_table = list(dict.fromkeys([p for _, p in class_items] + (list(options.prior_prompts) if distil else [])))
        row_of = {p: i for i, p in enumerate(class_table)}
        own_prompt = [row_of[p] for _, p in class_items]
        class_ids = text.tokenize(class_table, device)
    validating = bool(options.validation_every and options.validation_prompts)
    val_embeddings = None
    if not encode_each_step or distil:  # frozen text states; the distillation target always needs the base's
        for encoder in encoders:
            _move(encoder, device, weight_dtype)
        with torch.no_grad():
            inst_cond = None if encode_each_step else text.encode(inst_ids)
            class_cond = text.encode(class_ids) if class_items else None
            if validating and not encode_each_step:
                val_embeddings = validation_embeddings(pipe, options.validation_prompts, device)
        if not encode_each_step and device.type == "cuda":
            for encoder in encoders:  # everything they say is cached: no encoder on the GPU during the steps
                encoder.to("cpu")

    # A full fine-tune has no adapter to switch off: the distillation target comes from a frozen copy.
    teacher = copy.deepcopy(unet).to(device, weight_dtype).eval() if distil and options.method == "full" else None
    params = _prepare_trainable(unet, encoders, options, device, weight_dtype)
    # Two-phase pivotal tuning: the model's own weights (these groups) wait while the token's rows warm up.
    model_params = [p for group in params for p in group["params"]]
    warmup = options.token_warmup_steps if token_rows else 0
    for encoder in encoders if token_rows else ():  # SDXL: the token's rows in both encoders
        params.append(_trainable_token_rows(encoder, token_rows, options, device, weight_dtype))
    optimizer = _make_optimizer(params, options, device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: _lr_factor(done, warmup, options))
    trainable = [p for group in params for p in group["params"]]
    autocast = (
        torch.autocast("cuda", dtype=weight_dtype) if device.type == "cuda" and weight_dtype != torch.float32
        else contextlib.nullcontext()
    )
    scaler = torch.amp.GradScaler("cuda") if weight_dtype == torch.float16 else None
    in_training = [unet] + (list(encoders) if train_te else [])

    # 4. The loop: one optimizer step per iteration.
    inst_batches = _Batches(len(instance_images), options.batch_size, generator)
    class_batches = _Batches(len(class_items), options.batch_size, generator) if class_items else None
    for model in in_training:
        model.train()
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
        cond = None if encode_each_step else inst_cond[idx]
        sizes = None if inst_sizes is None else inst_sizes[idx]
        if with_prior:
            cidx = class_batches.next()
            latents = torch.cat([latents, _sample_latents(vae, class_mean[cidx], class_std[cidx], generator)])
            pidx = [own_prompt[i] for i in cidx]
            if distil:
                pidx = _remix(pidx, len(class_table), options.prior_remix_share, generator)
            ids = torch.cat([ids, class_ids[pidx]])
            cond = None if encode_each_step else cond.cat(class_cond[pidx])
            sizes = None if sizes is None else torch.cat([sizes, class_sizes[cidx]])

        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":  # SD 2.x 768-v and the demo model
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise TrainingError(f"This model's prediction type {prediction_type!r} is not supported for training.")

        if distil and with_prior:  # the class half's target becomes the base model's own prediction
            n = len(idx)
            conditions = text.unet_kwargs(class_cond[pidx], None if sizes is None else sizes[n:], weight_dtype)
            base = _base_prediction(unet if teacher is None else teacher, noisy[n:], timesteps[n:], conditions, weight_dtype, autocast)
            target = torch.cat([target[:n], base])
        with autocast:
            if encode_each_step:
                cond = text.encode(ids)
            pred = unet(noisy.to(weight_dtype), timesteps, **text.unet_kwargs(cond, sizes, weight_dtype)).sample
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
        if validating and (step % options.validation_every == 0 or step == options.steps):
            images = _validation_images(pipe, in_training, options, autocast, val_embeddings)
        report(TrainingProgress(
            phase="training", step=step, total=options.steps, loss=loss_value, seconds_per_step=per_step,
            eta_seconds=pace * (options.steps - step), validation_images=images,
            validation_prompts=options.validation_prompts if images else (),
        ))

    # 5. Write the checkpoint, all at once (SDXL's LoRA with both encoders' halves, kohya's way).
    for model in (unet, *encoders):
        model.eval()
    family = {"text_encoder_2": encoders[1], "is_xl": True} if text.is_xl else {}
    checkpoint, files = _save_checkpoint(
        Path(output_dir), method=options.method, unet=unet, text_encoder=encoders[0], train_text_encoder=train_te,
        token_state=token_embedding_state(encoders[0], token_rows) if token_rows else None, token=token,
        v_parameterization=prediction_type == "v_prediction", class_noun=class_noun, **family,
    )
    return TrainingResult(
        method=options.method, checkpoint_path=checkpoint, files=files,
        size_bytes=sum(f.stat().st_size for f in files), steps=options.steps,
        final_loss=float(loss_ema if loss_ema is not None else loss_value), seconds_per_step=train_seconds / options.steps,
        seconds_total=time.perf_counter() - started, class_images_generated=generated, options=options,
    )
