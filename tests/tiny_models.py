"""Tiny Stable Diffusion models of every family we support, built from small configs with seeded random
weights, as diffusers' own tests do.

Random weights test mechanics only (loading, shapes, the pipeline class, training steps, file layouts),
never image quality. Every folder is a complete diffusers model (model_index.json, unet, vae, text
encoder(s), tokenizer(s), scheduler) at 64 px native size, built in about a second and a few MB on disk.
The tokenizers are the real CLIP BPE vocabulary shipped in generation/sd15_config, so tokens such as
"sks" tokenize as they do on real models.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "generation" / "sd15_config" / "tokenizer"
FAMILIES = ("sd1", "sd2", "sd2v", "sdxl")
VOCAB_SIZE = 49408  # CLIP's, so the shipped tokenizer's ids fit the text encoders


def _text_config(hidden_act: str, hidden_size: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=hidden_size, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=VOCAB_SIZE,
        hidden_act=hidden_act, projection_dim=projection_dim, max_position_embeddings=77,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )


def _unet(family: str):
    from diffusers import UNet2DConditionModel

    common = dict(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    if family == "sd1":
        return UNet2DConditionModel(cross_attention_dim=32, attention_head_dim=8, **common)
    if family in ("sd2", "sd2v"):  # SD 2.x: linear projections, per-block head dims, OpenCLIP width
        return UNet2DConditionModel(cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, **common)
    # SDXL: both encoders' hidden states side by side (32 + 40) and the pooled text + 6 size ids. The
    # encoders differ in width as CLIP-L and bigG do: diffusers' single-file loader tells them apart so.
    return UNet2DConditionModel(
        cross_attention_dim=32 + 40, attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32, **common,
    )


def _scheduler(family: str):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

    schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if family == "sd1":
        return PNDMScheduler(skip_prk_steps=True, **schedule)
    if family == "sdxl":
        return EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1, **schedule)
    prediction = "v_prediction" if family == "sd2v" else "epsilon"
    return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction, **schedule)


def tiny_pipeline(family: str):
    """A tiny random pipeline of `family` ("sd1", "sd2", "sd2v", "sdxl") in float32 on the CPU."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    torch.manual_seed(0)
    unet = _unet(family)
    torch.manual_seed(0)
    vae = _vae()
    torch.manual_seed(0)
    if family == "sdxl":
        text_encoder = CLIPTextModel(_text_config("quick_gelu"))
        torch.manual_seed(0)
        text_encoder_2 = CLIPTextModelWithProjection(_text_config("gelu", hidden_size=40))
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER),
            tokenizer_2=CLIPTokenizer.from_pretrained(TOKENIZER, pad_token="!"),
            unet=unet, scheduler=_scheduler(family), force_zeros_for_empty_prompt=True,
        )
    sd2 = family in ("sd2", "sd2v")
    text_encoder = CLIPTextModel(_text_config("gelu" if sd2 else "quick_gelu"))
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER, **({"pad_token": "!"} if sd2 else {}))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_scheduler(family),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_model(family: str, folder: Path) -> Path:
    """Write a tiny random `family` model as a diffusers folder at `folder` (created) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_pipeline(family).save_pretrained(folder, safe_serialization=True)
    return folder
