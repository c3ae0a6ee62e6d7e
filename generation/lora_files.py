"""LoRA files other tools load: the kohya layout, with the subject's token embedding bundled inside.

AUTOMATIC1111/Forge/SD.Next, ComfyUI and InvokeAI read LoRAs in the layout kohya's sd-scripts
writes (networks/lora.py, LoRANetwork.create_modules): one entry per adapted module,
`<name>.lora_down.weight` (rank, in[, kh, kw]), `<name>.lora_up.weight` (out, rank[, 1, 1]) and
`<name>.alpha` (a scalar; the update is up·down·alpha/rank), where `<name>` is the module's path
with dots as underscores behind a prefix:
- SD 1.x/2.x UNet: `lora_unet_` + the diffusers path (`lora_unet_down_blocks_0_attentions_0_…`),
  as sd-scripts trains those on the diffusers UNet;
- SDXL UNet: `lora_unet_` + the original (SGM/LDM) path (`lora_unet_input_blocks_4_1_…`), as
  sd-scripts trains SDXL on its own SGM UNet; diffusers maps these back by the UNet config;
- text encoders: `lora_te_` (SD 1/2) or `lora_te1_`/`lora_te2_` (SDXL) + `text_model_encoder_…`
  (transformers 5 dropped `text_model.` from CLIPTextModel's names: added back here).
A pivotal-tuning run's token rows ride along as A1111's bundled embedding (its Lora extension,
networks.load_network): `bundle_emb.<token>.string_to_param.*` (n, dim) for SD 1/2, or
`bundle_emb.<token>.clip_l` / `.clip_g` for SDXL. diffusers' `load_lora_weights` refuses a file
with those keys, so `read_lora_file` splits them off. Worker side only (torch); no Django.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

BUNDLE_PREFIX = "bundle_emb."
# Which kohya prefix each pipeline text encoder gets.
_TEXT_PREFIXES = {False: {"text_encoder": "lora_te_"}, True: {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}}
_TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # A1111 splits bundle keys at dots
# Inside a resnet: diffusers names -> the original UNet's ResBlock (a Sequential) names.
_RESNET_PARTS = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}


def sgm_unet_prefixes(config: Any) -> dict[str, str]:
    """Diffusers module path prefix -> original (SGM/LDM) prefix for a UNet2DConditionModel config
    (a dict or the model's FrozenDict), both ending with a dot: the single-file export's own map
    (`checkpoint_convert.unet_block_prefixes`), so a LoRA and a checkpoint name a module alike. The
    same numbers as sd-scripts' library/sdxl_model_util.make_unet_conversion_map."""
    from .checkpoint_convert import unet_block_prefixes

    return unet_block_prefixes(dict(config))


def unet_lora_name(module: str, sgm: dict[str, str] | None = None) -> str:
    """The kohya name of a UNet module: `down_blocks.1.attentions.0.proj_in` ->
    `lora_unet_down_blocks_1_attentions_0_proj_in`, or with `sgm` (from `sgm_unet_prefixes`)
    `lora_unet_input_blocks_4_1_proj_in`."""
    if sgm is not None:
        dotted = module + "."
        head = max((p for p in sgm if dotted.startswith(p)), key=len, default=None)
        if head is None:
            raise ValueError(f"The UNet module {module!r} has no place in the original layout.")
        rest = dotted[len(head):].rstrip(".")
        if ".resnets." in head:
            first, _, tail = rest.partition(".")
            rest = ".".join(filter(None, [_RESNET_PARTS.get(first, first), tail]))
        module = (sgm[head] + rest).rstrip(".")
    return "lora_unet_" + module.replace(".", "_")


def text_lora_name(module: str, prefix: str) -> str:
    """`encoder.layers.0.self_attn.q_proj` (transformers 5) or `text_model.encoder…` ->
    `<prefix>text_model_encoder_layers_0_self_attn_q_proj`."""
    module = module.removeprefix("text_model.")
    return prefix + "text_model_" + module.replace(".", "_")


def _lora_layers(model: Any, adapter: str) -> Iterator[tuple[str, Any]]:
    """(module path, peft LoRA layer) for every module of `model` that carries `adapter`."""
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and adapter in lora_a:
            if adapter in getattr(module, "lora_magnitude_vector", {}):
                raise ValueError(f"{name} is a DoRA layer; the kohya layout has no place for its magnitude.")
            yield name, module


def _layer_tensors(module: Any, adapter: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(down, up, alpha) of one peft LoRA layer, float32 on the CPU. alpha = scaling × rank, so
    tools that scale by alpha/rank apply the same update as peft (rsLoRA included)."""
    down = module.lora_A[adapter].weight.detach().to("cpu", torch.float32).contiguous()
    up = module.lora_B[adapter].weight.detach().to("cpu", torch.float32).contiguous()
    alpha = torch.tensor(float(module.scaling[adapter]) * down.shape[0], dtype=torch.float32)
    return down, up, alpha


def kohya_state_dict(
    unet: Any, text_encoders: dict[str, Any], *, is_xl: bool, token: str | None = None,
    token_state: dict[str, torch.Tensor] | None = None, adapter: str = "default",
) -> dict[str, torch.Tensor]:
    """The LoRA of peft-adapted models in kohya keys, float32 on the CPU (see the module).

    `text_encoders` maps pipeline names ("text_encoder", "text_encoder_2") to models; those without
    the adapter add nothing. `token_state` is the token's rows as `generation.embeddings` passes
    them ({"token_ids": (n,), "embeddings": (n, dim)}, for SDXL optionally "embeddings_2" for the
    second encoder, else that encoder's current rows are bundled); it is bundled under `token`."""
    state: dict[str, torch.Tensor] = {}

    def add(name: str, module: Any) -> None:
        if name + ".lora_down.weight" in state:
            raise ValueError(f"Two modules map to the kohya name {name}.")
        down, up, alpha = _layer_tensors(module, adapter)
        state.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": alpha})

    sgm = sgm_unet_prefixes(unet.config) if is_xl else None
    for path, module in _lora_layers(unet, adapter):
        add(unet_lora_name(path, sgm), module)
    prefixes = _TEXT_PREFIXES[is_xl]
    for key, encoder in text_encoders.items():
        if encoder is None:
            continue
        if key not in prefixes:
            raise ValueError(f"Unknown text encoder {key!r}; expected one of {', '.join(prefixes)}.")
        for path, module in _lora_layers(encoder, adapter):
            add(text_lora_name(path, prefixes[key]), module)
    if token_state is not None:
        state.update(_bundle(token, token_state, text_encoders.get("text_encoder_2") if is_xl else None, is_xl))
    return state


def _bundle(token: str | None, token_state: dict[str, torch.Tensor], text_encoder_2: Any, is_xl: bool) -> dict[str, torch.Tensor]:
    if not token or not _TOKEN_NAME_RE.match(token):
        raise ValueError(f"A bundled embedding needs a token of letters, digits, '_' or '-', not {token!r}.")
    rows = token_state["embeddings"].detach().to("cpu", torch.float32).contiguous()
    if not is_xl:
        return {f"{BUNDLE_PREFIX}{token}.string_to_param.*": rows}
    second = token_state.get("embeddings_2")
    if second is None:
        if text_encoder_2 is None:
            raise ValueError("An SDXL bundled embedding needs rows for both encoders (clip_l and clip_g).")
        weight = text_encoder_2.get_input_embeddings().weight
        second = weight.detach()[token_state["token_ids"].to(weight.device)]
    second = second.detach().to("cpu", torch.float32).contiguous()
    if second.shape[0] != rows.shape[0]:
        raise ValueError("The two encoders' token rows differ in count.")
    return {f"{BUNDLE_PREFIX}{token}.clip_l": rows, f"{BUNDLE_PREFIX}{token}.clip_g": second}


def base_model_version(unet: Any, text_encoder: Any, *, is_xl: bool) -> str:
    """kohya's ss_base_model_version: "sdxl_base_v1-0", "sd_v2" (OpenCLIP text encoder) or "sd_v1"."""
    if is_xl:
        return "sdxl_base_v1-0"
    act = getattr(getattr(text_encoder, "config", None), "hidden_act", "quick_gelu")
    return "sd_v1" if act == "quick_gelu" and unet.config.cross_attention_dim != 1024 else "sd_v2"


def kohya_metadata(
    state: dict[str, torch.Tensor], *, base_version: str, v_parameterization: bool = False,
    token: str | None = None, class_noun: str | None = None,
) -> dict[str, str]:
    """The safetensors metadata kohya's tools write (what A1111's and ComfyUI's LoRA pages show),
    plus imagesite's own keys. Rank and alpha are the linear modules' (conv ones in ss_network_args)."""
    linear = [k[:-len(".lora_down.weight")] for k, v in state.items() if k.endswith(".lora_down.weight") and v.ndim == 2]
    conv = [k[:-len(".lora_down.weight")] for k, v in state.items() if k.endswith(".lora_down.weight") and v.ndim == 4]

    def dim_alpha(names: list[str]) -> tuple[str, str]:
        name = names[0]
        alpha = float(state[name + ".alpha"])
        return str(state[name + ".lora_down.weight"].shape[0]), str(int(alpha) if alpha.is_integer() else alpha)

    meta = {
        "ss_network_module": "networks.lora",
        "ss_base_model_version": base_version,
        "ss_v2": str(base_version == "sd_v2"),
        "ss_v_parameterization": str(v_parameterization),
        "imagesite_format": "kohya-1",
    }
    if linear or conv:
        meta["ss_network_dim"], meta["ss_network_alpha"] = dim_alpha(linear or conv)
    if conv:
        conv_dim, conv_alpha = dim_alpha(conv)
        meta["ss_network_args"] = json.dumps({"conv_dim": conv_dim, "conv_alpha": conv_alpha})
    if token:
        meta["imagesite_token"] = token
    if class_noun:
        meta["imagesite_class_noun"] = class_noun
    return meta


def write_lora_file(
    path: str | Path, unet: Any, text_encoders: dict[str, Any], *, is_xl: bool, token: str | None = None,
    token_state: dict[str, torch.Tensor] | None = None, class_noun: str | None = None,
    v_parameterization: bool = False,
) -> Path:
    """`kohya_state_dict` plus `kohya_metadata`, written as one .safetensors file at `path`."""
    from safetensors.torch import save_file

    state = kohya_state_dict(unet, text_encoders, is_xl=is_xl, token=token, token_state=token_state)
    if not any(k.endswith(".lora_down.weight") for k in state):
        raise ValueError("The models carry no LoRA adapter to save.")
    version = base_model_version(unet, text_encoders.get("text_encoder"), is_xl=is_xl)
    meta = kohya_metadata(state, base_version=version, v_parameterization=v_parameterization,
                          token=token if token_state is not None else None, class_noun=class_noun)
    save_file(state, str(path), metadata=meta)
    return Path(path)


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file read back: its LoRA tensors, bundled embeddings and metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    bundled: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # token -> {vector name: (n, dim)}
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The LoRA tensors alone, as `pipe.load_lora_weights(state, adapter_name=...)` takes them
        (a fresh dict each time: diffusers pops keys from what it is given). Complete for kohya
        files (alpha is a tensor there); an older peft-layout file's alpha is in its metadata, so
        load that one with `load_into`."""
        return dict(self.tensors)

    def load_into(self, pipe: Any, adapter_name: str) -> None:
        """`pipe.load_lora_weights` with this file's LoRA: the split-off tensors for a file with a
        bundled embedding (diffusers refuses its bundle_emb keys), else the path itself, so that an
        older run's peft-layout file keeps the lora_alpha diffusers reads from the file's metadata
        (a dict of its tensors alone would load at scale 1). Read with `weights=False`, the tensors
        are read from the file now, for peft to keep."""
        if self.bundled:
            state = self.state if self.tensors else read_lora_file(self.path).state
            pipe.load_lora_weights(state, adapter_name=adapter_name)
        else:
            pipe.load_lora_weights(str(self.path), adapter_name=adapter_name)

    @property
    def is_kohya(self) -> bool:
        return any(k.startswith(("lora_unet_", "lora_te")) for k in self.tensors)

    @property
    def token(self) -> str | None:
        """The bundled embedding's name (the subject's token), None when nothing is bundled."""
        known = self.metadata.get("imagesite_token")
        return known if known in self.bundled else next(iter(self.bundled), None)

    def token_rows(self, tokenizer: Any, *, encoder: int = 1) -> dict[str, torch.Tensor] | None:
        """The bundled rows for text encoder 1 (SD 1/2's only one, SDXL's CLIP-L) or 2 (SDXL's
        CLIP-G) as {"token_ids": (n,) int64, "embeddings": (n, dim) float32}, the format
        `generation.embeddings.swap_token_embedding` takes; the ids come from tokenizing the token
        as training did (its distinct pieces, in order). None when the file bundles no embedding."""
        token = self.token
        if token is None:
            return None
        vectors = self.bundled[token]
        name = {1: ("string_to_param.*", "clip_l"), 2: ("clip_g",)}[encoder]
        rows = next((vectors[n] for n in name if n in vectors), None)
        if rows is None:
            if encoder == 2:
                return None
            rows = next(iter(v for k, v in vectors.items() if k.startswith("string_to_param")), None)
            if rows is None:
                raise ValueError(f"{self.path.name} bundles “{token}” in a form imagesite does not read.")
        ids = list(dict.fromkeys(tokenizer(token, add_special_tokens=False).input_ids))
        if rows.ndim == 1:
            rows = rows.unsqueeze(0)
        if len(ids) != rows.shape[0]:
            raise ValueError(f"“{token}” is {len(ids)} token piece(s) for this tokenizer but {rows.shape[0]} bundled row(s).")
        return {"token_ids": torch.tensor(ids, dtype=torch.int64), "embeddings": rows.float()}


def read_lora_file(path: str | Path, *, weights: bool = True) -> LoraFile:
    """Read a LoRA .safetensors: a kohya file written by `write_lora_file` (or another tool), or an
    older run's diffusers/peft-layout file (no bundled embedding: its token rows are the separate
    textual-inversion file that `generation.embeddings.load_token_embedding` reads). `weights=False`
    reads the bundled embeddings and metadata only (KBs; `tensors` stays empty): what a worker keeps
    once peft holds the LoRA itself."""
    from safetensors import safe_open

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    bundled: dict[str, dict[str, torch.Tensor]] = {}
    has_weights = False
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        for key in f.keys():
            if key.startswith(BUNDLE_PREFIX):
                # A1111: `bundle_emb.<name>.<vector>`, the vector name may itself hold dots.
                _, name, vector = key.split(".", 2)
                bundled.setdefault(name, {})[vector] = f.get_tensor(key)
            else:
                has_weights = True
                if weights:
                    tensors[key] = f.get_tensor(key)
    if not has_weights:
        raise ValueError(f"{path.name} holds no LoRA weights.")
    return LoraFile(path=path, tensors=tensors, bundled=bundled, metadata=metadata)
