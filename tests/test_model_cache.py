"""A single checkpoint file becomes a diffusers folder once, in the cache, and is reused: every family,
the file's own precision, one conversion when two ask at once, nothing half-written when it fails.
Tiny models with random weights: mechanics only."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from generation import model_cache
from generation.checkpoint_convert import save_single_file
from generation.errors import GenerationError
from generation.families import detect_family
from generation.model_cache import diffusers_folder

from .torch_support import offline_hub, one_torch_thread  # noqa: F401  (autouse fixtures)

COMPONENTS = {"sd1": ("unet", "vae", "text_encoder"), "sd2": ("unet", "vae", "text_encoder"),
              "sd2v": ("unet", "vae", "text_encoder"), "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}


def _weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in sorted((folder / component).glob("*.safetensors")):
        state |= load_file(str(path))
    return {key.removeprefix("text_model."): value for key, value in state.items() if "position_ids" not in key}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2v", "sdxl"])
def test_a_single_file_is_converted_once_and_reused(tiny_model, tmp_path, family):
    folder = tiny_model(family)
    path = save_single_file(folder, tmp_path / f"{family}.safetensors", half=True)
    if family == "sd2":  # an SD 2.x file is 768-v unless a yaml beside it says otherwise
        (tmp_path / f"{family}.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    cache, said = tmp_path / "cache", []
    converted = diffusers_folder(path, cache_dir=cache, progress=said.append, config=str(folder))
    assert said[0] == f"Converting {family}.safetensors to a diffusers folder (once)" and len(said) == 2
    assert converted.parent == cache and converted.name.startswith(f"{family}-")
    assert detect_family(str(converted)).key == family
    # The same weights, in the file's own precision (fp16 here).
    for component in COMPONENTS[family]:
        mine, theirs = _weights(converted, component), _weights(folder, component)
        assert mine.keys() == theirs.keys(), component
        assert all(mine[k].dtype == torch.float16 and torch.equal(mine[k], theirs[k].half()) for k in mine), component
    assert any((converted / "tokenizer").glob("tokenizer*.json"))

    again: list[str] = []
    assert diffusers_folder(path, cache_dir=cache, progress=again.append, config=str(folder)) == converted
    assert again == []  # found in the cache: no second conversion
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [converted.name]


def test_a_folder_is_returned_as_it_is(tiny_model, tmp_path):
    assert diffusers_folder(tiny_model("sd1"), cache_dir=tmp_path) == tiny_model("sd1")
    assert list(tmp_path.iterdir()) == []


def test_a_changed_file_is_converted_again(tiny_model, tmp_path):
    folder = tiny_model("sd1")
    path = save_single_file(folder, tmp_path / "model.ckpt")
    first = diffusers_folder(path, cache_dir=tmp_path / "cache", config=str(folder))
    save_single_file(folder, path, half=True)  # same name, new content
    second = diffusers_folder(path, cache_dir=tmp_path / "cache", config=str(folder))
    assert first != second and second.is_dir()
    assert _weights(second, "unet")["conv_in.weight"].dtype == torch.float16  # the .ckpt's precision, read from its pickle


def test_two_at_once_convert_once(tiny_model, tmp_path, monkeypatch):
    folder = tiny_model("sd1")
    path = save_single_file(folder, tmp_path / "model.safetensors")
    real, calls = model_cache._convert, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_cache, "_convert", counted)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(diffusers_folder(path, cache_dir=tmp_path / "c", config=str(folder))))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]


def test_a_failed_conversion_leaves_nothing_in_the_cache(demo_file, tmp_path):
    # The demo is SD 1.x by its keys but 64 px: SD 1.5's shipped configs cannot hold it.
    cache = tmp_path / "cache"
    with pytest.raises(GenerationError, match="does not match the architecture"):
        diffusers_folder(demo_file, cache_dir=cache, config=None)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_killed_conversions_leftovers_are_cleared(tiny_model, tmp_path):
    folder = tiny_model("sd1")
    path = save_single_file(folder, tmp_path / "model.safetensors")
    cache = tmp_path / "cache"
    converted = diffusers_folder(path, cache_dir=cache, config=str(folder))
    leftover = cache / f".{converted.name}.x1y2.partial"
    import shutil

    shutil.rmtree(converted)  # as if the earlier conversion had been killed before its rename
    (leftover / "unet").mkdir(parents=True)
    assert diffusers_folder(path, cache_dir=cache, config=str(folder)) == converted
    assert not leftover.exists()


def test_an_sdxl_file_missing_weights_is_a_readable_error(tiny_model, tmp_path):
    # from_single_file leaves a weight the file lacks without data (the meta device) instead of
    # failing; here bigG's text projection. That becomes a message, not a crash at the first render.
    from safetensors.torch import load_file, save_file

    folder = tiny_model("sdxl")
    state = load_file(str(save_single_file(folder, tmp_path / "full.safetensors")))
    del state["conditioner.embedders.1.model.text_projection"]
    path = tmp_path / "xl.safetensors"
    save_file(state, str(path))
    with pytest.raises(GenerationError, match="does not hold every weight .* text_encoder_2 lacks text_projection.weight"):
        diffusers_folder(path, cache_dir=tmp_path / "cache", config=str(folder))


@pytest.mark.parametrize(("name", "content", "message"), [
    ("broken.safetensors", b"\x00\x01", "damaged"),
    ("notes.ckpt", b"not a model", "not a torch checkpoint"),
])
def test_unreadable_files_are_readable_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GenerationError, match=message):
        diffusers_folder(path, cache_dir=tmp_path / "cache")


def test_the_cache_defaults_to_the_setting(tiny_model, tmp_path, settings):
    folder = tiny_model("sd1")
    path = save_single_file(folder, tmp_path / "model.safetensors")
    settings.IMAGESITE_MODEL_CACHE = str(tmp_path / "from-settings")
    settings.IMAGESITE_MODEL_CONFIG = str(folder)
    assert diffusers_folder(path).parent == tmp_path / "from-settings"


@pytest.fixture
def demo_file(tmp_path) -> Path:
    from django.conf import settings

    return save_single_file(settings.IMAGESITE_MODEL, tmp_path / "demo.safetensors")
