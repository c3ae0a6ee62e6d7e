"""File names a training run writes into its folder. No imports: the web process reads them
without loading torch (training/dreambooth/ does)."""

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' own name for a LoRA file
TOKEN_EMBEDDING_NAME = "token_embeddings.safetensors"  # the rare token's learnt rows (pivotal tuning)
