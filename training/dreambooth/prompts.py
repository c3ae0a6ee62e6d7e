"""The prompts a run trains on: one per instance photo, and the pool the class images are made from."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


def instance_prompts_for(n_photos: int, captions: Sequence[str | None] | None, token: str, class_noun: str) -> list[str]:
    """One prompt per photo: its caption when given, else "a photo of <token> <class>"."""
    fallback = f"a photo of {token} {class_noun}"
    captions = list(captions or [])
    return [(captions[i] or "").strip() or fallback if i < len(captions) else fallback for i in range(n_photos)]


def class_prompt_for(instance_prompt: str, token: str, class_noun: str) -> str:
    """The class prompt paired with an instance prompt: the same caption without the token.

    "a sks shape on a red background" -> "a shape on a red background"; a caption that is only
    the fallback gives DreamBooth's "a photo of a <class>".
    """
    if instance_prompt == f"a photo of {token} {class_noun}":
        return f"a photo of a {class_noun}"
    without = re.sub(rf"\s*\b{re.escape(token)}\b\s*", " ", instance_prompt).strip()
    return re.sub(r"\s+", " ", without) or f"a photo of a {class_noun}"


# One class image in ten has the empty prompt: classifier-free guidance subtracts the model's
# unconditional prediction from every prompt's, so a subject that moved it would move them all.
EMPTY_PROMPT_SHARE = 0.1


def class_prompt_pool(instance_prompts: Sequence[str], token: str, class_noun: str, prior_prompts: Sequence[str], n: int, seed: int) -> list[str]:
    """The `n` prompts to make class images from, in order.

    A tenth are the empty prompt; the rest take turns from three lists, each cycled: the instance
    captions without the token, the model's own prompts that name the class ("a red square on a
    blue background" for class "square"), and its other prompts (shuffled with `seed`). Without
    `prior_prompts` (an SD checkpoint without imagesite.json) that is the captions alone.
    """
    own = list(dict.fromkeys(class_prompt_for(p, token, class_noun) for p in instance_prompts))
    shuffled = [prior_prompts[i] for i in np.random.default_rng(seed).permutation(len(prior_prompts))]
    names_class = re.compile(rf"\b{re.escape(class_noun.lower())}\b")
    same_class = [p for p in shuffled if names_class.search(p.lower())]
    others = [p for p in shuffled if not names_class.search(p.lower())]
    sources = [lst for lst in (own, same_class, others) if lst]
    n_empty = round(n * EMPTY_PROMPT_SHARE) if n > 1 else 0
    turns = [0] * len(sources)
    wanted = []
    for i in range(n - n_empty):
        k = i % len(sources)
        wanted.append(sources[k][turns[k] % len(sources[k])])
        turns[k] += 1
    return wanted + [""] * n_empty

