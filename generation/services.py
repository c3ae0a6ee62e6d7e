"""Work that spans rows and the queue."""
from __future__ import annotations

import secrets

from django.db import transaction

from .models import MAX_SEED, Generation
from .rules import current_model


def create_generation(*, owner, prompt: str, seed: int | None = None, **settings) -> Generation:
    """Create the row and queue its task in one transaction; a blank seed becomes a random one, and
    the seed used is recorded."""
    with transaction.atomic():
        generation = Generation.objects.create(
            owner=owner,
            prompt=prompt,
            seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
            model_name=current_model().name,
            **settings,
        )
        generation.enqueue()
    return generation
