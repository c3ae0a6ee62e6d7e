"""How other tools find the module a LoRA key belongs to, re-implemented from their code for
tests/test_kohya_export.py (those tools cannot run here: they need their whole apps and real weights).

Each function names the file and function it follows:
- ComfyUI (comfyanonymous/ComfyUI): comfy/lora.py `model_lora_keys_unet`, `model_lora_keys_clip`,
  `load_lora`; comfy/utils.py `unet_to_diffusers`; comfy/model_detection.py `detect_unet_config`.
- AUTOMATIC1111 (AUTOMATIC1111/stable-diffusion-webui, v1.10; Forge keeps the same names):
  extensions-builtin/Lora/networks.py `convert_diffusers_name_to_compvis`,
  `assign_network_names_to_compvis_modules`, `load_network` (incl. its bundle_emb branch and the
  q/k/v/out rule of `network_apply_weights` for OpenCLIP's fused attention);
  modules/textual_inversion/textual_inversion.py `create_embedding_from_data`.
- SD.Next (vladmandic/automatic), diffusers backend: extensions-builtin/Lora/lora_convert.py
  `KeyConvert.diffusers`, `make_unet_conversion_map` (also kohya's library/sdxl_model_util.py).
The original module names come from the diffusers config the way ComfyUI's `unet_to_diffusers`
lays them out; the tests check that this map covers every weight of the UNet.
"""
from __future__ import annotations

import bisect
import re
from typing import Any

# comfy/utils.py
UNET_MAP_ATTENTIONS = {"proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias", "norm.weight", "norm.bias"}
TRANSFORMER_BLOCKS = {
    "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias",
    "attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn1.to_out.0.weight", "attn1.to_out.0.bias",
    "attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight", "attn2.to_out.0.weight", "attn2.to_out.0.bias",
    "ff.net.0.proj.weight", "ff.net.0.proj.bias", "ff.net.2.weight", "ff.net.2.bias",
}
UNET_MAP_RESNET = {
    "in_layers.2.weight": "conv1.weight", "in_layers.2.bias": "conv1.bias",
    "emb_layers.1.weight": "time_emb_proj.weight", "emb_layers.1.bias": "time_emb_proj.bias",
    "out_layers.3.weight": "conv2.weight", "out_layers.3.bias": "conv2.bias",
    "skip_connection.weight": "conv_shortcut.weight", "skip_connection.bias": "conv_shortcut.bias",
    "in_layers.0.weight": "norm1.weight", "in_layers.0.bias": "norm1.bias",
    "out_layers.0.weight": "norm2.weight", "out_layers.0.bias": "norm2.bias",
}
UNET_MAP_BASIC = {
    ("label_emb.0.0.weight", "class_embedding.linear_1.weight"), ("label_emb.0.0.bias", "class_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "class_embedding.linear_2.weight"), ("label_emb.0.2.bias", "class_embedding.linear_2.bias"),
    ("label_emb.0.0.weight", "add_embedding.linear_1.weight"), ("label_emb.0.0.bias", "add_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "add_embedding.linear_2.weight"), ("label_emb.0.2.bias", "add_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"), ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"), ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"), ("out.2.bias", "conv_out.bias"),
    ("time_embed.0.weight", "time_embedding.linear_1.weight"), ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"), ("time_embed.2.bias", "time_embedding.linear_2.bias"),
}
# comfy/lora.py
LORA_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj", "self_attn.out_proj": "self_attn_out_proj",
}


def comfy_unet_config(config: dict[str, Any]) -> dict[str, Any]:
    """The LDM-terms config ComfyUI's `detect_unet_config` reads off such a UNet's original keys:
    transformers per input block, per output block listed last first (it pops from the end)."""
    levels = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    depth = config.get("transformer_layers_per_block") or 1
    depth = [depth] * levels if isinstance(depth, int) else list(depth)
    down = [depth[x] if config["down_block_types"][x].startswith("CrossAttn") else 0 for x in range(levels) for _ in range(layers)]
    up = [depth[::-1][x] if config["up_block_types"][x].startswith("CrossAttn") else 0 for x in range(levels) for _ in range(layers + 1)]
    return {
        "num_res_blocks": [layers] * levels, "channel_mult": [1] * levels, "transformer_depth": down,
        "transformer_depth_output": up[::-1], "transformer_depth_middle": depth[-1],
    }


def unet_to_diffusers(unet_config: dict[str, Any]) -> dict[str, str]:
    """comfy/utils.py `unet_to_diffusers`: diffusers weight key -> original (LDM/SGM) weight key."""
    num_res_blocks = unet_config["num_res_blocks"]
    transformer_depth = unet_config["transformer_depth"][:]
    transformer_depth_output = unet_config["transformer_depth_output"][:]
    num_blocks = len(unet_config["channel_mult"])
    out: dict[str, str] = {}
    for x in range(num_blocks):
        n = 1 + (num_res_blocks[x] + 1) * x
        for i in range(num_res_blocks[x]):
            for b in UNET_MAP_RESNET:
                out[f"down_blocks.{x}.resnets.{i}.{UNET_MAP_RESNET[b]}"] = f"input_blocks.{n}.0.{b}"
            num_transformers = transformer_depth.pop(0)
            if num_transformers > 0:
                for b in UNET_MAP_ATTENTIONS:
                    out[f"down_blocks.{x}.attentions.{i}.{b}"] = f"input_blocks.{n}.1.{b}"
                for t in range(num_transformers):
                    for b in TRANSFORMER_BLOCKS:
                        out[f"down_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"] = f"input_blocks.{n}.1.transformer_blocks.{t}.{b}"
            n += 1
        for k in ("weight", "bias"):
            out[f"down_blocks.{x}.downsamplers.0.conv.{k}"] = f"input_blocks.{n}.0.op.{k}"
    for b in UNET_MAP_ATTENTIONS:
        out[f"mid_block.attentions.0.{b}"] = f"middle_block.1.{b}"
    for t in range(unet_config["transformer_depth_middle"]):
        for b in TRANSFORMER_BLOCKS:
            out[f"mid_block.attentions.0.transformer_blocks.{t}.{b}"] = f"middle_block.1.transformer_blocks.{t}.{b}"
    for i, n in enumerate([0, 2]):
        for b in UNET_MAP_RESNET:
            out[f"mid_block.resnets.{i}.{UNET_MAP_RESNET[b]}"] = f"middle_block.{n}.{b}"
    num_res_blocks = list(reversed(num_res_blocks))
    for x in range(num_blocks):
        n = (num_res_blocks[x] + 1) * x
        length = num_res_blocks[x] + 1
        for i in range(length):
            c = 0
            for b in UNET_MAP_RESNET:
                out[f"up_blocks.{x}.resnets.{i}.{UNET_MAP_RESNET[b]}"] = f"output_blocks.{n}.0.{b}"
            c += 1
            num_transformers = transformer_depth_output.pop()
            if num_transformers > 0:
                c += 1
                for b in UNET_MAP_ATTENTIONS:
                    out[f"up_blocks.{x}.attentions.{i}.{b}"] = f"output_blocks.{n}.1.{b}"
                for t in range(num_transformers):
                    for b in TRANSFORMER_BLOCKS:
                        out[f"up_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"] = f"output_blocks.{n}.1.transformer_blocks.{t}.{b}"
            if i == length - 1:
                for k in ("weight", "bias"):
                    out[f"up_blocks.{x}.upsamplers.0.conv.{k}"] = f"output_blocks.{n}.{c}.conv.{k}"
            n += 1
    for ldm, diffusers in UNET_MAP_BASIC:
        out[diffusers] = ldm
    return out


def comfy_unet_key_map(config: dict[str, Any]) -> dict[str, str]:
    """comfy/lora.py `model_lora_keys_unet`: LoRA name -> model weight, from the model's original
    keys (`lora_unet_` + LDM path) and from `unet_to_diffusers` (`lora_unet_` + diffusers path)."""
    key_map: dict[str, str] = {}
    diffusers_keys = unet_to_diffusers(comfy_unet_config(config))
    for ldm in diffusers_keys.values():
        if ldm.endswith(".weight"):
            key_map["lora_unet_" + ldm[:-len(".weight")].replace(".", "_")] = "diffusion_model." + ldm
    for k, ldm in diffusers_keys.items():
        if k.endswith(".weight"):
            key_map["lora_unet_" + k[:-len(".weight")].replace(".", "_")] = "diffusion_model." + ldm
    return key_map


def comfy_clip_key_map(encoders: dict[str, int]) -> dict[str, str]:
    """comfy/lora.py `model_lora_keys_clip` for a CLIP model whose state dict has `encoders`
    ({"clip_l": layers} for SD 1, {"clip_h": ...} for SD 2, clip_l + clip_g for SDXL)."""
    sdk = {f"{name}.transformer.text_model.encoder.layers.{b}.{c}.weight"
           for name, layers in encoders.items() for b in range(layers) for c in LORA_CLIP_MAP}
    key_map: dict[str, str] = {}
    clip_l_present = False
    for b in range(32):
        for c in LORA_CLIP_MAP:
            k = f"clip_h.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in sdk:
                key_map[f"lora_te_text_model_encoder_layers_{b}_{LORA_CLIP_MAP[c]}"] = k
                key_map[f"lora_te1_text_model_encoder_layers_{b}_{LORA_CLIP_MAP[c]}"] = k
            k = f"clip_l.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in sdk:
                key_map[f"lora_te_text_model_encoder_layers_{b}_{LORA_CLIP_MAP[c]}"] = k
                key_map[f"lora_te1_text_model_encoder_layers_{b}_{LORA_CLIP_MAP[c]}"] = k
                clip_l_present = True
            k = f"clip_g.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in sdk:
                prefix = "lora_te2_" if clip_l_present else "lora_te_"
                key_map[f"{prefix}text_model_encoder_layers_{b}_{LORA_CLIP_MAP[c]}"] = k
    return key_map


def comfy_unloaded_keys(lora: dict[str, Any], key_map: dict[str, str]) -> list[str]:
    """comfy/lora.py `load_lora`: the file's keys it would log as "lora key not loaded"."""
    loaded: set[str] = set()
    for x in key_map:
        if f"{x}.lora_up.weight" in lora:
            loaded |= {f"{x}.lora_up.weight", f"{x}.lora_down.weight"}
            if f"{x}.alpha" in lora:
                loaded.add(f"{x}.alpha")
    return sorted(k for k in lora if k not in loaded)


# --- AUTOMATIC1111 ---------------------------------------------------------------------------
_SUFFIX_CONVERSION = {"attentions": {}, "resnets": {
    "conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
    "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}}
_RE_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def convert_diffusers_name_to_compvis(key: str, is_sd2: bool) -> str:
    """extensions-builtin/Lora/networks.py `convert_diffusers_name_to_compvis`."""
    def match(regex: str) -> list | None:
        r = re.match(regex, key)
        return [int(x) if re.match(r"\d+", x) else x for x in r.groups()] if r else None

    if (m := match(r"lora_unet_conv_in(.*)")) is not None:
        return f"diffusion_model_input_blocks_0_0{m[0]}"
    if (m := match(r"lora_unet_conv_out(.*)")) is not None:
        return f"diffusion_model_out_2{m[0]}"
    if (m := match(r"lora_unet_time_embedding_linear_(\d+)(.*)")) is not None:
        return f"diffusion_model_time_embed_{m[0] * 2 - 2}{m[1]}"
    if (m := match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)")) is not None:
        suffix = _SUFFIX_CONVERSION.get(m[1], {}).get(m[3], m[3])
        return f"diffusion_model_input_blocks_{1 + m[0] * 3 + m[2]}_{1 if m[1] == 'attentions' else 0}_{suffix}"
    if (m := match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)")) is not None:
        suffix = _SUFFIX_CONVERSION.get(m[0], {}).get(m[2], m[2])
        return f"diffusion_model_middle_block_{1 if m[0] == 'attentions' else m[1] * 2}_{suffix}"
    if (m := match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)")) is not None:
        suffix = _SUFFIX_CONVERSION.get(m[1], {}).get(m[3], m[3])
        return f"diffusion_model_output_blocks_{m[0] * 3 + m[2]}_{1 if m[1] == 'attentions' else 0}_{suffix}"
    if (m := match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv")) is not None:
        return f"diffusion_model_input_blocks_{3 + m[0] * 3}_0_op"
    if (m := match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv")) is not None:
        return f"diffusion_model_output_blocks_{2 + m[0] * 3}_{2 if m[0] > 0 else 1}_conv"
    if (m := match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)")) is not None:
        if is_sd2:
            part = m[1].replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")
            return f"model_transformer_resblocks_{m[0]}_{part}"
        return f"transformer_text_model_encoder_layers_{m[0]}_{m[1]}"
    if (m := match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)")) is not None:
        part = m[1].replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")
        return f"1_model_transformer_resblocks_{m[0]}_{part}"
    return key


def a1111_layer_names(family: str, unet_config: dict[str, Any], text_layers: dict[str, int]) -> set[str]:
    """`assign_network_names_to_compvis_modules`: module names of the original-layout model (the
    UNet under `diffusion_model`; SD 1's transformers CLIP, SD 2's OpenCLIP whose attention is one
    nn.MultiheadAttention `attn` with `out_proj`; SDXL's two embedders numbered 0 and 1)."""
    names = {"diffusion_model_" + k.rsplit(".", 1)[0].replace(".", "_") for k in unet_to_diffusers(comfy_unet_config(unet_config)).values()}

    def hf_clip(prefix: str, layers: int) -> set[str]:
        return {f"{prefix}transformer_text_model_encoder_layers_{b}_{part}" for b in range(layers)
                for part in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")}

    def open_clip(prefix: str, layers: int) -> set[str]:
        return {f"{prefix}model_transformer_resblocks"} | {f"{prefix}model_transformer_resblocks_{b}_{part}" for b in range(layers)
                                                          for part in ("attn", "attn_out_proj", "mlp_c_fc", "mlp_c_proj")}

    if family == "sdxl":
        return names | hf_clip("0_", text_layers["text_encoder"]) | open_clip("1_", text_layers["text_encoder_2"])
    if family == "sd2":
        return names | open_clip("", text_layers["text_encoder"])
    return names | hf_clip("", text_layers["text_encoder"])


def a1111_unmatched(lora: dict[str, Any], mapping: set[str]) -> list[str]:
    """`load_network`'s keys_failed_to_match for this file, plus modules `network_apply_weights`
    cannot apply (a fused OpenCLIP attention needs q, k, v and out together). bundle_emb keys land
    in keys_failed_to_match too (the embedding is read from them first): left out here."""
    is_sd2 = "model_transformer_resblocks" in mapping
    failed: list[str] = []
    fused: dict[str, set[str]] = {}
    for key in lora:
        base, _, _ = key.partition(".")
        if base == "bundle_emb":
            continue
        name = convert_diffusers_name_to_compvis(base, is_sd2)
        found = name in mapping
        if not found and (m := _RE_X_PROJ.match(name)) and m.group(1) in mapping:
            found = True
            fused.setdefault(m.group(1), set()).add(m.group(2))
        if not found and "lora_unet" in base:
            found = base.replace("lora_unet", "diffusion_model") in mapping
        elif not found and "lora_te1_text_model" in base:
            found = (base.replace("lora_te1_text_model", "0_transformer_text_model") in mapping
                     or base.replace("lora_te1_text_model", "transformer_text_model") in mapping)
        if not found:
            failed.append(key)
    for attn, parts in fused.items():
        if parts != {"q_proj", "k_proj", "v_proj"} or not any(k.startswith(_fused_out(attn, lora)) for k in lora):
            failed.append(f"{attn} (q/k/v/out incomplete)")
    return failed


def _fused_out(attn: str, lora: dict[str, Any]) -> str:
    """The kohya name of the out projection beside a fused attention's q/k/v."""
    layer = re.search(r"resblocks_(\d+)_attn$", attn).group(1)
    prefix = "lora_te2_" if attn.startswith("1_") else "lora_te_"
    return f"{prefix}text_model_encoder_layers_{layer}_self_attn_out_proj."


def a1111_bundled_embeddings(lora: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """`load_network`'s bundle_emb branch, then `create_embedding_from_data`: name -> (vectors,
    width), raising where A1111 would."""
    bundled: dict[str, dict[str, Any]] = {}
    for key, weight in lora.items():
        base, _, part = key.partition(".")
        if base != "bundle_emb":
            continue
        emb_name, vec_name = part.split(".", 1)
        emb = bundled.setdefault(emb_name, {})
        if vec_name.split(".")[0] == "string_to_param":
            emb["string_to_param"] = {vec_name.split(".", 1)[1]: weight}
        else:
            emb[vec_name] = weight
    out = {}
    for name, data in bundled.items():
        if "string_to_param" in data:
            params = data["string_to_param"]
            assert len(params) == 1, "embedding file has multiple terms in it"
            vec = next(iter(params.values()))
            out[name] = (vec.shape[0], vec.shape[-1])
        elif "clip_g" in data and "clip_l" in data:
            out[name] = (data["clip_g"].shape[0], data["clip_g"].shape[-1] + data["clip_l"].shape[-1])
        else:
            raise ValueError(f"Couldn't identify {name} as neither textual inversion embedding nor diffuser concept.")
    return out


# --- SD.Next, diffusers backend --------------------------------------------------------------
def _sdnext_sdxl_map() -> dict[str, str]:
    """lora_convert.py `make_unet_conversion_map` (SDXL only): SGM prefix -> diffusers prefix."""
    layer: list[tuple[str, str]] = []
    for i in range(3):
        for j in range(2):
            layer.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            layer.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(3):
            layer.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            layer.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        layer.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        layer.append((f"output_blocks.{3 * i + 2}.2.", f"up_blocks.{i}.upsamplers.0."))
    layer.append(("middle_block.1.", "mid_block.attentions.0."))
    layer += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    resnet = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("out_layers.0.", "norm2."),
              ("out_layers.3.", "conv2."), ("emb_layers.1.", "time_emb_proj."), ("skip_connection.", "conv_shortcut.")]
    pairs = [(sd + a, hf + b) for sd, hf in layer if "resnets" in hf for a, b in resnet] + [(sd, hf) for sd, hf in layer if "resnets" not in hf]
    pairs += [(f"time_embed.{j * 2}.", f"time_embedding.linear_{j + 1}.") for j in range(2)]
    pairs += [(f"label_emb.0.{j * 2}.", f"add_embedding.linear_{j + 1}.") for j in range(2)]
    pairs += [("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
    return {sd.replace(".", "_")[:-1]: hf.replace(".", "_")[:-1] for sd, hf in pairs}


def sdnext_unmatched(lora: dict[str, Any], *, is_xl: bool, unet_modules: list[str], text_modules: dict[str, list[str]]) -> list[str]:
    """`KeyConvert.diffusers` against the diffusers pipeline's modules (`lora_unet_`/`lora_te_`/
    `lora_te1_`/`lora_te2_` + module path; transformers 4 names, with `text_model.`)."""
    prefixes = {"text_encoder": "lora_te1_" if is_xl else "lora_te_", "text_encoder_2": "lora_te2_"}
    mapping = {"lora_unet_" + m.replace(".", "_") for m in unet_modules}
    for name, modules in text_modules.items():
        mapping |= {prefixes[name] + "text_model_" + m.removeprefix("text_model.").replace(".", "_") for m in modules}
    conversion = _sdnext_sdxl_map() if is_xl else None
    failed = []
    for key in lora:
        base = key.split(".")[0]
        if base == "bundle_emb":
            continue
        if conversion is not None:
            map_keys = sorted(conversion)
            search = base.replace("lora_unet_", "").replace("oft_unet_", "").replace("lora_te1_", "").replace("lora_te2_", "")
            map_key = map_keys[bisect.bisect_right(map_keys, search) - 1]
            if search.startswith(map_key):
                base = base.replace(map_key, conversion[map_key])
        if base not in mapping:
            failed.append(key)
    return failed
