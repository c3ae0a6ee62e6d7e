"""Model and scheduler configurations of the demo model: genuine SD 1.x classes, tiny sizes.

64x64 px images, a VAE that goes x4 down to 16x16x4 latents, a UNet on those latents with
cross-attention to a 2-layer, 64-wide CLIP text encoder that uses CLIP's real 49,408-token vocabulary.

The noise schedule is SD's scaled-linear one rescaled to zero terminal SNR (Lin et al. 2023, "Common
Diffusion Noise Schedules and Sample Steps are Flawed"): at t=999 the training input is pure noise, so
the model cannot read the image's mean colour from the leftover signal and has to take it from the
prompt. That needs v-prediction (epsilon is undefined at zero SNR) and "trailing" timestep spacing
(so sampling starts at t=999, where training put the pure noise).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr
from transformers import CLIPTextConfig, CLIPTextModel

from .data import IMAGE_SIZE
from .tokenizer import MAX_LENGTH

LATENT_SIZE = IMAGE_SIZE // 4
TEXT_WIDTH = 64
VOCAB_SIZE = 49408
BOS_ID, EOS_ID = 49406, 49407
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
# Stand-in for alpha_bar(T) = 0 where a sampler divides by it; the value diffusers itself uses.
TERMINAL_ALPHA_BAR = 2.0 ** -24


def vae_config() -> dict:
    """AutoencoderKL: (32, 64, 64) channels, 1 layer per block, 64x64x3 px <-> 16x16x4 latents."""
    return dict(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1,
        latent_channels=4, norm_num_groups=32, sample_size=IMAGE_SIZE,
    )


def unet_config() -> dict:
    """UNet2DConditionModel on 16x16x4 latents, cross-attention to the 64-wide text states."""
    return dict(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64), layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4, norm_num_groups=32,
    )


def text_config() -> CLIPTextConfig:
    """CLIPTextModel: 2 layers, width 64, CLIP's vocabulary and 77-token context."""
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_WIDTH, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    )


def zero_snr_betas() -> list[float]:
    """SD's scaled-linear betas (1000) rescaled to zero terminal SNR, with alpha_bar(T) set to 2**-24
    instead of exactly 0 so that every diffusers sampler, including those without a
    ``rescale_betas_zero_snr`` option (PNDM, LMS, Heun...), can use them as ``trained_betas``."""
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, NUM_TRAIN_TIMESTEPS,
                           dtype=torch.float64) ** 2
    betas = rescale_zero_terminal_snr(betas)
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    betas[-1] = 1.0 - TERMINAL_ALPHA_BAR / alpha_bar[-2]
    return [float(b) for b in betas]


def scheduler_kwargs() -> dict:
    """Settings shared by the training and the shipped sampling scheduler.

    ``trained_betas`` carries the zero-SNR schedule itself, so ``Cls.from_config(config)`` gives the
    same schedule to every sampler class, including those with no ``rescale_betas_zero_snr`` option
    (PNDM, LMS, Heun). ``rescale_betas_zero_snr`` stays False because the rescale is already baked in:
    applying it a second time would shift alpha_bar near t=T and break its monotonicity.
    ``skip_prk_steps`` is for PNDM (as in SD 1.5's config); the other classes ignore it.
    """
    return dict(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
        beta_schedule="scaled_linear", trained_betas=zero_snr_betas(),
        prediction_type="v_prediction", rescale_betas_zero_snr=False,
        timestep_spacing="trailing", steps_offset=1,  # unused by "trailing"; SD pipelines warn if not 1
    )


def train_scheduler() -> DDPMScheduler:
    """The DDPM scheduler that adds noise during training: the very schedule the samplers use."""
    return DDPMScheduler(**scheduler_kwargs(), clip_sample=False)


def sampling_scheduler() -> DPMSolverMultistepScheduler:
    """The shipped default sampler: DPM-Solver++ 2M on the zero-SNR schedule."""
    sched = DPMSolverMultistepScheduler(
        **scheduler_kwargs(), algorithm_type="dpmsolver++", solver_order=2,
        final_sigmas_type="zero", lower_order_final=True,
    )
    sched.register_to_config(skip_prk_steps=True)
    return sched


def new_models(seed: int) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    """Freshly initialised (seeded) VAE, UNet and text encoder, fp32 on the CPU."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())
    unet = UNet2DConditionModel(**unet_config())
    text_encoder = CLIPTextModel(text_config())
    return vae, unet, text_encoder
