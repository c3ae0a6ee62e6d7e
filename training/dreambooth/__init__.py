"""DreamBooth training over plain arguments: no Django, a progress callback and a cancel check.

The method (Ruiz et al. 2022) as diffusers' examples/dreambooth scripts implement it, written for
this project:

1. Load the base pipeline of its family (SD 1.x, SD 2.x 512 / 768-v, SDXL: the class its
   model_index.json names; a single file is converted once into a cached folder); build a DDPM
   noise schedule from its scheduler config (so v-prediction and the zero-terminal-SNR betas of
   the demo model carry over).
2. Optionally generate class images with the base model (prior preservation), cached on disk,
   with the run's memory plan (on a GPU: fp16, VAE slicing, the batch that fits, offload if need be).
3. Encode the instance (and class) images once with the frozen VAE, and the prompts once with the
   text encoder(s) when they stay frozen (`conditioning`: SDXL's two encoders, pooled text and
   size ids), which then leave the GPU: each step costs only the UNet.
4. Train: noise-prediction loss on the instance images, plus `prior_loss_weight` × the same loss on
   class images (towards the class image's own target, or the frozen base model's prediction:
   `prior_target`). LoRA (peft, on the UNet attention projections) or the whole UNet; optionally the
   rare token's embedding rows too (pivotal tuning). docs/dreambooth.md has the measurements.
5. Write the checkpoint at the very end, through a temporary name, so a cancel or a crash never
   leaves a half-written file.

Devices: float32 on the CPU. On a GPU: fp16/bf16 autocast, gradient checkpointing and
bitsandbytes' 8-bit AdamW when asked for (and installed); an out-of-memory retries once with all
of them on.

The modules, by meaning: `options` (TrainingOptions, the defaults per model and method, their
check; torch-free), `progress` (what a run reports back; torch-free), `prompts`, `data`,
`sampling` (base pipeline, class and validation images), `conditioning` (what the UNet is told,
per family), `lora` (what trains), `objective` (the
loss and the schedule), `checkpoints` (the files), `devices` (what the machine decides:
`default_options_for`, the optimizer) and `loop` (`train_dreambooth`). The token-embedding file
and swap live in generation.embeddings (inference needs them too).

Import from the module that holds a name (`from training.dreambooth.loop import train_dreambooth`):
this package module imports nothing, so `training.dreambooth.options` (the web process's training
form) loads no torch.
"""
