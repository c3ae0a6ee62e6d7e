"""The LoRA a user downloads: kohya layout that AUTOMATIC1111/Forge, SD.Next and ComfyUI map key by
key, the token's embedding bundled as A1111 reads it, and the same output as the peft original
when it goes back into diffusers' `load_lora_weights` (and imagesite's renderer, which uses that).

Tiny models with seeded random weights (tests/tiny_models.py) test the mechanics only: names,
shapes, scales and that the converted file changes the output exactly as the original did, never
image quality. The real SD 1.5, SD 2 and SDXL configs are checked by module names alone (meta
device: no weights). The other tools' key maps are ports of their code (tests/lora_tool_keymaps.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from generation.embeddings import load_token_embedding, swap_token_embedding
from generation.lora_files import (
    kohya_state_dict, read_lora_file, sgm_unet_prefixes, text_lora_name, unet_lora_name, write_lora_file,
)
from training.checkpoint_names import LORA_WEIGHT_NAME, TOKEN_EMBEDDING_NAME
from training.dreambooth.lora import TEXT_ENCODER_TARGET_MODULES
from training.dreambooth.options import RESNET_CONV_TARGET_MODULES, TrainingOptions

from . import lora_tool_keymaps as tools
from .torch_support import one_torch_thread  # noqa: F401  (autouse fixtures)

ROOT = Path(__file__).resolve().parent.parent
# What our runs put LoRA on: the attention projections (every family) and the resnets' 3×3
# convolutions (the demo model's default), and the text encoders' attention when asked.
UNET_TARGETS = [*TrainingOptions.lora_target_modules, *RESNET_CONV_TARGET_MODULES]
# Every Linear/Conv2d a kohya LoCon may touch: for the real configs' name checks.
ALL_UNET_TARGETS = UNET_TARGETS + ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "time_emb_proj", "conv_shortcut", "conv"]
ALL_TEXT_TARGETS = [*TEXT_ENCODER_TARGET_MODULES, "fc1", "fc2"]
PROMPT = "a photo of sks dog"


def _pipe(tiny_model, family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(tiny_model(family), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _encoders(pipe) -> dict:
    return {name: getattr(pipe, name) for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None) is not None}


def _adapt(pipe, *, text: bool = True) -> dict[str, torch.Tensor]:
    """LoRA as a run attaches it (UNet r 4 / alpha 8, text encoders r 2 / alpha 3), with random B
    matrices (a fresh LoRA's are zero and would change nothing) and the token's rows moved, as a
    trained pivotal-tuning run leaves them. Returns the token rows."""
    from peft import LoraConfig, inject_adapter_in_model

    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    encoders = _encoders(pipe)
    if text:
        for encoder in encoders.values():
            inject_adapter_in_model(LoraConfig(r=2, lora_alpha=3, init_lora_weights="gaussian", target_modules=TEXT_ENCODER_TARGET_MODULES), encoder)
    generator = torch.Generator().manual_seed(1)
    ids = torch.tensor(list(dict.fromkeys(pipe.tokenizer("sks", add_special_tokens=False).input_ids)))
    rows: dict[str, torch.Tensor] = {"token_ids": ids}
    with torch.no_grad():
        for model in (pipe.unet, *encoders.values()):
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        for key, encoder in zip(("embeddings", "embeddings_2"), encoders.values()):
            weight = encoder.get_input_embeddings().weight
            weight[ids] = torch.randn(len(ids), weight.shape[1], generator=generator)
            rows[key] = weight[ids].clone()
    return rows


def _render(pipe) -> np.ndarray:
    return pipe(PROMPT, num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def _peft_layers(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and "default" in m.lora_A]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_every_lora_module_converts_with_its_shapes_and_scale(tiny_model, family) -> None:
    pipe = _pipe(tiny_model, family)
    _adapt(pipe)
    state = kohya_state_dict(pipe.unet, _encoders(pipe), is_xl=family == "sdxl")
    layers = _peft_layers(pipe.unet) + [n for e in _encoders(pipe).values() for n in _peft_layers(e)]
    downs = [k for k in state if k.endswith(".lora_down.weight")]
    assert len(downs) == len(layers) and len(state) == 3 * len(layers)
    assert any(v.ndim == 4 for v in state.values())  # the convolutions keep their 3×3 kernels
    prefixes = {"lora_unet_", "lora_te1_", "lora_te2_"} if family == "sdxl" else {"lora_unet_", "lora_te_"}
    assert {k.split("text_model")[0] if "_te" in k else "lora_unet_" for k in downs} == prefixes
    for key in downs:
        name = key.removesuffix(".lora_down.weight")
        assert float(state[name + ".alpha"]) / state[key].shape[0] == (2.0 if "unet" in name else 1.5)
    if family == "sdxl":  # sd-scripts' SDXL names (the original UNet's)
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in state
        assert "lora_unet_output_blocks_2_2_conv.lora_down.weight" not in state  # no LoRA on samplers here
        assert "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight" in state
        assert "lora_te2_text_model_encoder_layers_1_self_attn_out_proj.lora_up.weight" in state
    else:
        assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in state
        assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in state


@pytest.mark.parametrize("family", ["sd1", "sd2v", "sdxl"])
def test_kohya_file_renders_as_the_peft_original_with_the_bundled_token(tiny_model, tmp_path, family) -> None:
    trained = _pipe(tiny_model, family)
    rows = _adapt(trained)
    original = _render(trained)  # the peft adapters and the moved token rows, in place
    path = write_lora_file(tmp_path / "sks.safetensors", trained.unet, _encoders(trained), is_xl=family == "sdxl",
                           token="sks", token_state=rows, v_parameterization=family == "sd2v")

    fresh = _pipe(tiny_model, family)
    base = _render(fresh)
    lora = read_lora_file(path)
    lora.load_into(fresh, "subject")  # the state dict without bundle_emb keys
    for number, encoder in enumerate(_encoders(fresh).values(), start=1):
        swap_token_embedding(encoder, lora.token_rows(fresh.tokenizer, encoder=number))
    converted = _render(fresh)
    assert np.abs(original - base).max() > 1e-2  # the LoRA and token change the picture…
    np.testing.assert_allclose(converted, original, atol=1e-5)  # …and the kohya file changes it the same way


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_bundled_token_round_trips_and_the_metadata_names_the_model(tiny_model, tmp_path, family) -> None:
    pipe = _pipe(tiny_model, family)
    rows = _adapt(pipe, text=False)
    path = write_lora_file(tmp_path / "sks.safetensors", pipe.unet, _encoders(pipe), is_xl=family == "sdxl",
                           token="sks", token_state=rows, class_noun="dog")
    lora = read_lora_file(path)
    assert lora.is_kohya and lora.token == "sks" and not any(k.startswith("bundle_emb") for k in lora.state)
    back = lora.token_rows(pipe.tokenizer)
    assert back["token_ids"].tolist() == rows["token_ids"].tolist() == [48136]
    assert torch.equal(back["embeddings"], rows["embeddings"])
    meta = lora.metadata
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "8"}
    assert meta["imagesite_token"] == "sks" and meta["imagesite_class_noun"] == "dog"
    if family == "sdxl":
        assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
        assert set(lora.bundled["sks"]) == {"clip_l", "clip_g"}
        assert torch.equal(lora.token_rows(pipe.tokenizer_2, encoder=2)["embeddings"], rows["embeddings_2"])
    else:
        assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
        assert set(lora.bundled["sks"]) == {"string_to_param.*"}
        assert lora.token_rows(pipe.tokenizer, encoder=2) is None


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_a1111_comfyui_and_sdnext_find_every_key_of_a_tiny_models_lora(tiny_model, tmp_path, family) -> None:
    pipe = _pipe(tiny_model, family)
    rows = _adapt(pipe)
    is_xl = family == "sdxl"
    path = write_lora_file(tmp_path / "sks.safetensors", pipe.unet, _encoders(pipe), is_xl=is_xl, token="sks", token_state=rows)
    from safetensors.torch import load_file

    lora = load_file(str(path))
    layers = {name: enc.config.num_hidden_layers for name, enc in _encoders(pipe).items()}
    _assert_tools_load(lora, family, dict(pipe.unet.config), layers)
    modules = {name: [n for n, _ in enc.named_modules()] for name, enc in _encoders(pipe).items()}
    assert tools.sdnext_unmatched(lora, is_xl=is_xl, unet_modules=[n for n, _ in pipe.unet.named_modules()], text_modules=modules) == []
    width = sum(e.config.hidden_size for e in _encoders(pipe).values())
    assert tools.a1111_bundled_embeddings(lora) == {"sks": (1, width)}  # one vector, both encoders' widths


def _assert_tools_load(lora: dict, family: str, unet_config: dict, layers: dict[str, int]) -> None:
    """Every LoRA key maps in ComfyUI and A1111; ComfyUI leaves only the bundled embedding
    ("lora key not loaded": it reads embeddings from models/embeddings instead)."""
    clip = {"sd1": {"clip_l": layers["text_encoder"]}, "sd2": {"clip_h": layers["text_encoder"]},
            "sdxl": {"clip_l": layers["text_encoder"], "clip_g": layers.get("text_encoder_2", 0)}}[family]
    comfy = {**tools.comfy_unet_key_map(unet_config), **tools.comfy_clip_key_map(clip)}
    assert all(k.startswith("bundle_emb.") for k in tools.comfy_unloaded_keys(lora, comfy))
    mapping = tools.a1111_layer_names("sd2" if family == "sd2" else family, unet_config, layers)
    assert tools.a1111_unmatched(lora, mapping) == []


@pytest.mark.parametrize("config", ["sd15_config", "sd2_config", "sdxl_config"])
def test_real_configs_every_linear_and_conv_maps_in_a1111_comfyui_and_sdnext(config) -> None:
    """Names only, on the meta device: every Linear/Conv2d a kohya LoCon may adapt in the real
    UNet and every text-encoder projection, as our file names them, resolves in each tool."""
    from diffusers import UNet2DConditionModel

    folder = ROOT / "generation" / config
    is_xl, family = config == "sdxl_config", {"sd15_config": "sd1", "sd2_config": "sd2", "sdxl_config": "sdxl"}[config]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    sgm = sgm_unet_prefixes(unet.config) if is_xl else None
    targets = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
               and any(n == t or n.endswith("." + t) for t in ALL_UNET_TARGETS) and (".resnets." in n or ".attentions." in n or "samplers" in n)]
    lora = {f"{unet_lora_name(n, sgm)}.{part}": None for n in targets for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    layers, text_modules = {}, {}
    for name in ("text_encoder", "text_encoder_2"):
        if (folder / name).is_dir():
            layers[name] = json.loads((folder / name / "config.json").read_text())["num_hidden_layers"]
            prefix = ("lora_te1_" if name == "text_encoder" else "lora_te2_") if is_xl else "lora_te_"
            text_modules[name] = [f"text_model.encoder.layers.{b}.{'mlp' if t.startswith('fc') else 'self_attn'}.{t}"
                                  for b in range(layers[name]) for t in ALL_TEXT_TARGETS]
            lora |= {f"{text_lora_name(m, prefix)}.{part}": None for m in text_modules[name] for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert len(targets) > 100
    _assert_tools_load(lora, family, dict(unet.config), layers)
    assert tools.sdnext_unmatched(lora, is_xl=is_xl, unet_modules=[n for n, _ in unet.named_modules()], text_modules=text_modules) == []


@pytest.mark.parametrize("config", ["sd15_config", "sdxl_config", "tiny sd1", "tiny sdxl"])
def test_the_ported_comfyui_map_covers_every_unet_weight_and_agrees_with_ours(tiny_model, config) -> None:
    """Checks the test's own port: ComfyUI's diffusers→original map names every weight of the
    UNet, and our SGM names (SDXL) are its names."""
    from diffusers import UNet2DConditionModel

    folder = tiny_model(config.split()[1]) if config.startswith("tiny") else ROOT / "generation" / config
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    comfy = tools.unet_to_diffusers(tools.comfy_unet_config(dict(unet.config)))
    assert set(unet.state_dict()) <= set(comfy)
    sgm = sgm_unet_prefixes(unet.config)
    for key, ldm in comfy.items():
        if key in unet.state_dict() and key.endswith(".weight") and "norm" not in key:
            assert unet_lora_name(key.removesuffix(".weight"), sgm) == "lora_unet_" + ldm.removesuffix(".weight").replace(".", "_")


def test_an_older_runs_peft_layout_file_and_token_file_still_load(tiny_model, tmp_path) -> None:
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    from generation.embeddings import save_token_embedding

    trained = _pipe(tiny_model, "sd1")
    rows = _adapt(trained, text=False)
    original = _render(trained)
    # As training/dreambooth/checkpoints.py wrote it before the kohya export: peft keys, the LoraConfig alongside.
    config = json.loads(json.dumps(trained.unet.peft_config["default"].to_dict(), default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(trained.unet),
                                              safe_serialization=True, unet_lora_adapter_metadata=config)
    save_token_embedding(rows, tmp_path / TOKEN_EMBEDDING_NAME, "sks")
    lora = read_lora_file(tmp_path / "pytorch_lora_weights.safetensors")
    assert not lora.is_kohya and lora.token is None and lora.token_rows(trained.tokenizer) is None
    fresh = _pipe(tiny_model, "sd1")
    fresh.load_lora_weights(lora.state, adapter_name="dict")  # a dict alone loses the file's lora_alpha…
    assert np.abs(_render(fresh) - original).max() > 1e-3
    fresh.delete_adapters("dict")
    lora.load_into(fresh, "old")  # …so load_into gives diffusers the path
    swap_token_embedding(fresh.text_encoder, load_token_embedding(tmp_path / TOKEN_EMBEDDING_NAME))
    np.testing.assert_allclose(_render(fresh), original, atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_save_checkpoint_writes_one_kohya_lora_and_the_token_file(tiny_model, tmp_path, family) -> None:
    from training.dreambooth.checkpoints import _save_checkpoint, token_embedding_state

    pipe = _pipe(tiny_model, family)
    rows = _adapt(pipe, text=False)
    checkpoint, files = _save_checkpoint(
        tmp_path, method="lora", unet=pipe.unet, text_encoder=pipe.text_encoder, train_text_encoder=False,
        token_state=token_embedding_state(pipe.text_encoder, rows["token_ids"].tolist()), token="sks",
        text_encoder_2=getattr(pipe, "text_encoder_2", None), is_xl=family == "sdxl", class_noun="dog",
    )
    assert checkpoint == tmp_path / LORA_WEIGHT_NAME and [f.name for f in files] == [TOKEN_EMBEDDING_NAME, LORA_WEIGHT_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LORA_WEIGHT_NAME, TOKEN_EMBEDDING_NAME])
    lora = read_lora_file(checkpoint)
    assert all(k.startswith("lora_unet_") for k in lora.state) and lora.metadata["imagesite_class_noun"] == "dog"
    alone = load_token_embedding(tmp_path / TOKEN_EMBEDDING_NAME)
    assert torch.equal(alone["embeddings"], lora.token_rows(pipe.tokenizer)["embeddings"])
    if family == "sdxl":  # ComfyUI's and A1111's SDXL embedding file: clip_l and clip_g
        assert torch.equal(alone["embeddings_2"], rows["embeddings_2"])
        from safetensors import safe_open

        with safe_open(str(tmp_path / TOKEN_EMBEDDING_NAME), "pt") as f:
            assert sorted(f.keys()) == ["clip_g", "clip_l"]


def test_refusals_name_the_problem(tiny_model, tmp_path) -> None:
    pipe = _pipe(tiny_model, "sd1")
    with pytest.raises(ValueError, match="no LoRA adapter"):
        write_lora_file(tmp_path / "x.safetensors", pipe.unet, {}, is_xl=False)
    rows = _adapt(pipe, text=False)
    with pytest.raises(ValueError, match="letters, digits"):
        kohya_state_dict(pipe.unet, {}, is_xl=False, token="s.ks", token_state=rows)
    path = write_lora_file(tmp_path / "sks.safetensors", pipe.unet, {}, is_xl=False, token="sks", token_state=rows)
    with pytest.raises(ValueError, match="token piece"):
        read_lora_file(path).token_rows(lambda text, add_special_tokens: type("T", (), {"input_ids": [1, 2]})())


@pytest.mark.django_db
@pytest.mark.parametrize("file_name", [LORA_WEIGHT_NAME, "pytorch_lora_weights.safetensors"])
def test_run_page_and_download_name_the_lora_for_other_tools(owner, owner_client, other_client, file_name) -> None:
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.urls import reverse

    from imagesite.jobs import JobStatus
    from training.models import Subject, TrainingRun

    subject = Subject.objects.create(owner=owner, name="Rex", token="sks", class_noun="dog")
    folder = f"{subject.files_prefix()}/runs/1"
    name = default_storage.save(f"{folder}/{file_name}", ContentFile(b"lora"))
    default_storage.save(f"{folder}/{TOKEN_EMBEDDING_NAME}", ContentFile(b"rows"))
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, checkpoint=name, checkpoint_size=4, files_dir=folder)
    page = owner_client.get(run.get_absolute_url()).content.decode()
    download = owner_client.get(reverse("training-run-checkpoint", args=[run.pk]))
    embedding = owner_client.get(reverse("training-run-token-embedding", args=[run.pk]))
    assert embedding["Content-Disposition"] == 'attachment; filename="sks-embedding.safetensors"'
    if file_name == LORA_WEIGHT_NAME:
        assert "&lt;lora:sks:1&gt; a photo of sks dog" in page and "embedding:sks-embedding" in page
        assert download["Content-Disposition"] == 'attachment; filename="sks.safetensors"'
    else:  # an older run's diffusers-layout file: named as before, and the page says where it loads
        assert "lora:sks" not in page and "loads in diffusers only" in page
        assert download["Content-Disposition"] == f'attachment; filename="sks-dog-lora-run{run.pk}.safetensors"'
    assert other_client.get(reverse("training-run-checkpoint", args=[run.pk])).status_code == 404
