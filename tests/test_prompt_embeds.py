"""Weighted, chunked prompt embeddings (generation.prompt_embeds) on tiny SD 1.x, SD 2.x-v and SDXL
models, and a render on the demo model.

The tiny models have seeded random weights: they test mechanics only (shapes, equality with
diffusers, where weights act). The demo model is really trained, so its test checks meaning: a
heavier "red" gives a redder image."""
from __future__ import annotations

import pytest

from .torch_support import offline_hub, one_torch_thread  # noqa: F401

torch = pytest.importorskip("torch")

from generation.prompt_embeds import MEAN_EPSILON, encode_prompt, prompt_chunks  # noqa: E402

FAMILIES = ["sd1", "sd2v", "sdxl"]
PLAIN = "a red circle on a blue background"
# 200 words of one CLIP token each: 3 chunks of 75 tokens.
LONG_WORDS = ["red", "blue", "green", "circle", "square"] * 40


@pytest.fixture(scope="module")
def pipes(tiny_model):
    from diffusers import DiffusionPipeline

    loaded = {}

    def get(family: str):
        if family not in loaded:
            pipe = DiffusionPipeline.from_pretrained(tiny_model(family))
            pipe.set_progress_bar_config(disable=True)
            loaded[family] = pipe
        return loaded[family]

    return get


def _diffusers_embeds(pipe, prompt: str, negative: str | None) -> dict:
    """What the pipeline itself computes from `prompt=` / `negative_prompt=`."""
    if hasattr(pipe, "text_encoder_2"):
        out = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negative)
        keys = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    else:
        out = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
        keys = ["prompt_embeds", "negative_prompt_embeds"]
    return dict(zip(keys, out))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("negative", [None, "blurry, low quality"])
def test_plain_prompt_gives_exactly_the_diffusers_embeddings(pipes, family, negative):
    pipe = pipes(family)
    ours = encode_prompt(pipe, PLAIN, negative)
    theirs = _diffusers_embeds(pipe, PLAIN, negative)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_sdxl_empty_negative_is_zeros_as_diffusers_gives_it(pipes):
    ours = encode_prompt(pipes("sdxl"), PLAIN, "")
    assert not ours["negative_prompt_embeds"].any() and not ours["negative_pooled_prompt_embeds"].any()


def test_num_images_per_prompt_repeats_the_batch(pipes):
    ours = encode_prompt(pipes("sdxl"), PLAIN, None, num_images_per_prompt=3)
    assert [tuple(v.shape[:1]) for v in ours.values()] == [(3,)] * 4


@pytest.mark.parametrize("family", FAMILIES)
def test_a_200_token_prompt_is_three_chunks_and_its_last_words_count(pipes, family):
    pipe = pipes(family)
    text = " ".join(LONG_WORDS)
    assert len(pipe.tokenizer(text, add_special_tokens=False).input_ids) == 200
    assert [len(c.ids) for c in prompt_chunks(pipe.tokenizer, text)] == [77, 77, 77]

    red = encode_prompt(pipe, text[: -len("square")] + "red", None)
    square = encode_prompt(pipe, text, None)
    assert red["prompt_embeds"].shape[1] == 231
    assert red["negative_prompt_embeds"].shape == red["prompt_embeds"].shape  # negative padded to 3 chunks
    assert torch.equal(red["prompt_embeds"][:, :154], square["prompt_embeds"][:, :154])
    assert not torch.equal(red["prompt_embeds"][:, 154:], square["prompt_embeds"][:, 154:])  # not truncated


def test_a_long_prompt_starts_with_what_diffusers_gives_for_its_first_75_tokens(pipes):
    pipe = pipes("sdxl")
    text = " ".join(LONG_WORDS)
    ours = encode_prompt(pipe, text, None)
    theirs = _diffusers_embeds(pipe, text, None)  # diffusers truncates to 77 positions
    assert torch.equal(ours["prompt_embeds"][:, :77], theirs["prompt_embeds"])
    assert torch.equal(ours["pooled_prompt_embeds"], theirs["pooled_prompt_embeds"])  # the first chunk's pooled


def test_a_long_negative_pads_the_short_prompt_with_empty_chunks(pipes):
    pipe = pipes("sd1")
    ours = encode_prompt(pipe, PLAIN, " ".join(LONG_WORDS))
    empty = encode_prompt(pipe, "", None)["prompt_embeds"]
    assert ours["prompt_embeds"].shape[1] == ours["negative_prompt_embeds"].shape[1] == 231
    assert torch.equal(ours["prompt_embeds"][:, 77:154], empty)
    assert torch.equal(ours["prompt_embeds"][:, :77], _diffusers_embeds(pipe, PLAIN, None)["prompt_embeds"])


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_scale_the_weighted_tokens_as_a1111_does(pipes, family):
    """(red:w): red's position is multiplied by w, then the chunk by mean(plain) / mean(weighted),
    each encoder's half on its own (SDXL). The random SD 1.x/2.x encoders end in a bias-free layer
    norm, so their mean is ~0 and the correction is skipped there (apply_weights)."""
    pipe = pipes(family)
    plain = encode_prompt(pipe, PLAIN, None)["prompt_embeds"]
    red = 2  # <bos> a red
    width = pipe.text_encoder.config.hidden_size
    halves = plain.split([width, plain.shape[-1] - width], -1) if family == "sdxl" else [plain]
    for weight in (1.5, 0.5):
        weighted = encode_prompt(pipe, PLAIN.replace("red", f"(red:{weight})"), None)["prompt_embeds"]
        multipliers = torch.ones(1, 77, 1)
        multipliers[:, red] = weight
        expected = []
        for h in halves:
            factor = h.mean() / (h * multipliers).mean()
            corrected = h.mean().abs() > MEAN_EPSILON * h.abs().mean()
            assert bool(corrected) == (family == "sdxl")
            expected.append(h * multipliers * (factor if corrected else 1))
        torch.testing.assert_close(weighted, torch.cat(expected, dim=-1), rtol=1e-5, atol=1e-6)

    # Whatever the correction, red stands out 1.5 / 0.5 = 3 times more against the other positions
    # (in each encoder's half: SDXL's two halves are corrected by different factors).
    heavy = encode_prompt(pipe, PLAIN.replace("red", "(red:1.5)"), None)["prompt_embeds"][0]
    light = encode_prompt(pipe, PLAIN.replace("red", "(red:0.5)"), None)["prompt_embeds"][0]
    others = [i for i in range(77) if i != red]

    def prominence(z):
        return z[red].norm() / z[others].norm(dim=-1).mean()

    for start, end in [(0, width), (width, plain.shape[-1])] if family == "sdxl" else [(0, width)]:
        ratio = prominence(heavy[:, start:end]) / prominence(light[:, start:end])
        assert ratio == pytest.approx(3.0, rel=1e-4)


def test_break_starts_a_new_chunk(pipes):
    pipe = pipes("sd1")
    broken = encode_prompt(pipe, "a red circle BREAK on a blue background", None)["prompt_embeds"]
    assert broken.shape[1] == 154
    assert torch.equal(broken[:, :77], encode_prompt(pipe, "a red circle", None)["prompt_embeds"])
    assert torch.equal(broken[:, 77:], encode_prompt(pipe, "on a blue background", None)["prompt_embeds"])


def test_lora_tags_are_not_encoded_as_words(pipes):
    pipe = pipes("sd1")
    tagged = encode_prompt(pipe, "a red <lora:ink:0.8>circle on a blue background", "<lora:x> ugly")
    plain = encode_prompt(pipe, PLAIN, " ugly")
    for key in plain:
        assert torch.equal(tagged[key], plain[key])


@pytest.mark.parametrize("family", ["sd2v", "sdxl"])
def test_the_pipeline_renders_from_long_weighted_embeddings(pipes, family):
    pipe = pipes(family)
    kwargs = encode_prompt(pipe, "(a red circle:1.3) BREAK " + " ".join(LONG_WORDS), "[blurry]")
    images = pipe(**kwargs, num_inference_steps=2, guidance_scale=3.0, height=64, width=64, output_type="np").images
    assert images.shape == (1, 64, 64, 3)


def _mean_red(pipe, prompt: str) -> tuple[float, object]:
    """Mean red channel (0-1) over 4 seeded 64 px images, 8 steps, CFG 3 (the demo's default)."""
    seeds = [1, 2, 3, 4]
    kwargs = encode_prompt(pipe, prompt, None)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    images = pipe(**kwargs, num_inference_steps=8, guidance_scale=3.0, num_images_per_prompt=len(seeds), generator=generators, output_type="np").images
    return float(images[..., 0].mean()), images


def test_demo_model_heavier_red_gives_a_redder_image():
    """On the trained demo model: "(red:1.5)" against "(red:0.5)" moves the mean red (measured about
    0.49 vs 0.41, 0.43 unweighted); an unweighted prompt through our embeddings renders the very pixels
    `pipe(prompt=...)` renders; a prompt of nearly 200 tokens' last words change the image."""
    from pathlib import Path

    from diffusers import StableDiffusionPipeline

    root = Path(__file__).resolve().parent.parent
    pipe = StableDiffusionPipeline.from_pretrained(root / "generation" / "demo_model", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    heavy, _ = _mean_red(pipe, "a (red:1.5) circle on a blue background")
    plain, ours = _mean_red(pipe, PLAIN)
    light, _ = _mean_red(pipe, "a (red:0.5) circle on a blue background")
    assert heavy > plain > light
    assert heavy - light > 0.04

    generators = [torch.Generator("cpu").manual_seed(s) for s in [1, 2, 3, 4]]
    theirs = pipe(PLAIN, num_inference_steps=8, guidance_scale=3.0, num_images_per_prompt=4, generator=generators, output_type="np").images
    assert (ours == theirs).all()

    # 187 tokens: the last words land in the third chunk. diffusers' own call truncates them away (the
    # same image twice); ours keeps them. The demo model was trained on one-chunk captions, so the
    # change is small (measured 0.017 mean absolute difference, pixels 0-1) but it is there.
    filler = ", ".join(["a square"] * 60)
    endings = ["a red circle on a blue background", "a green circle on a yellow background"]
    _, ends_red = _mean_red(pipe, f"{filler}, {endings[0]}")
    _, ends_green = _mean_red(pipe, f"{filler}, {endings[1]}")
    assert abs(ends_red - ends_green).mean() > 0.005
    truncated = [
        pipe(f"{filler}, {end}", num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(1), output_type="np").images
        for end in endings
    ]
    assert (truncated[0] == truncated[1]).all()
