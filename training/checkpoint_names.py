"""File names a training run writes into its folder, and the names a user downloads them by. No
imports: the web process reads them without loading torch (training/dreambooth/ does)."""

import re

# The LoRA in kohya layout with the token's embedding bundled (generation.lora_files): the file
# AUTOMATIC1111, Forge, SD.Next, ComfyUI and InvokeAI load.
LORA_WEIGHT_NAME = "lora.safetensors"
# What runs before the kohya export wrote: diffusers/peft layout (only diffusers loads it).
DIFFUSERS_LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# The rare token's learnt rows (pivotal tuning) as a textual-inversion file: the LoRA bundles them
# too, but ComfyUI ignores bundled embeddings and reads this one from models/embeddings.
TOKEN_EMBEDDING_NAME = "token_embeddings.safetensors"


def lora_download_name(token: str) -> str:
    """The LoRA's download name: AUTOMATIC1111/Forge/SD.Next name a LoRA by its file name, so a
    user types `<lora:sks:1> a photo of sks dog` (the token is unique per user)."""
    return _safe(token) + ".safetensors"


def token_embedding_download_name(token: str) -> str:
    """The token file's download name: ComfyUI names an embedding by its file name
    (`embedding:sks-embedding` in a prompt); not the LoRA's name, so the two downloads never clash."""
    return _safe(token) + "-embedding.safetensors"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "subject"


def named_for_tools(found: tuple[str, str] | None, token: str) -> tuple[str, str] | None:
    """A run's (storage name, download name) answer with the download named as other tools want
    it: the kohya LoRA as `lora_download_name`, the token file as `token_embedding_download_name`.
    Anything else (an older run's diffusers-layout LoRA, a full fine-tune's UNet) keeps its name."""
    if found is None:
        return None
    file_name = found[0].rsplit("/", 1)[-1]
    names = {LORA_WEIGHT_NAME: lora_download_name, TOKEN_EMBEDDING_NAME: token_embedding_download_name}
    return (found[0], names[file_name](token)) if file_name in names else found
