"""A short real DreamBooth run through the training cluster, then generating with the subject."""
from __future__ import annotations

import hashlib
import numpy as np
import pytest
from django.core.files.storage import default_storage
from django_q.models import Task
from PIL import Image

from generation.models import Generation
from generation.services import create_generation
from imagesite.jobs import JobStatus
from training import services
from training.models import Subject
from training.tasks import process_photo

from .api_support import checkered_photo
from .conftest import wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def pixels_of(generation: Generation) -> list[np.ndarray]:
    out = []
    for image in generation.images.order_by("index"):
        with image.file.open("rb") as f:
            out.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.int16))
    return out


def _process(outcome) -> None:
    """Check and crop the uploaded photos here (the default cluster's task; this test runs only the trainer)."""
    for photo in outcome.accepted:
        process_photo(photo.pk)
        photo.refresh_from_db()


SETTINGS = dict(negative_prompt="", steps=8, guidance_scale=7.5, width=64, height=64, scheduler="dpmpp_2m", num_images=1)


def test_train_a_lora_then_generate_with_it_without_leaking(owner, workers):
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    outcome = services.add_photos(subject=subject, files=[checkered_photo(i) for i in range(3)])
    assert len(outcome.accepted) == 3
    _process(outcome)
    first, second, third = outcome.accepted
    services.set_captions(subject=subject, captions={first.pk: "", second.pk: "a sks shape on a green background", third.pk: ""})
    trainer = workers.start(Q_CLUSTER_NAME="training")
    try:
        run = services.start_training(subject=subject, options={"steps": 12, "prior_preservation": False, "learning_rate": 5e-3})
        wait_for_status(run, JobStatus.SUCCEEDED, timeout=300)
    finally:
        trainer.stop()
    assert run.checkpoint.endswith(".safetensors") and run.checkpoint_size > 0 and run.loss is not None
    assert default_storage.exists(run.checkpoint)
    # the demo model's default is pivotal tuning: the token's learnt rows are stored beside the LoRA
    assert run.token_embedding_name() and default_storage.exists(run.token_embedding_name())
    # validation images landed in the gallery as the subject's generations, drawn from its caption
    validation = Generation.objects.filter(training_run=run, status=JobStatus.SUCCEEDED)
    assert validation.exists() and all(g.prompt.startswith("a sks shape on a green background (training step ") for g in validation)

    workers.ensure_shared()
    base_before = create_generation(owner=owner, prompt="a photo of sks shape", seed=4, **SETTINGS)
    wait_for_status(base_before, JobStatus.SUCCEEDED)
    with_subject = create_generation(owner=owner, prompt="a photo of sks shape", seed=4, subject=subject, **SETTINGS)
    wait_for_status(with_subject, JobStatus.SUCCEEDED)
    base_after = create_generation(owner=owner, prompt="a photo of sks shape", seed=4, **SETTINGS)
    wait_for_status(base_after, JobStatus.SUCCEEDED)

    before, lora, after = pixels_of(base_before)[0], pixels_of(with_subject)[0], pixels_of(base_after)[0]
    assert np.abs(lora - before).mean() > 1.0, "the LoRA must change the output"
    assert np.array_equal(before, after), "the subject must not leak into the next job"
    assert with_subject.model_name.endswith("+ Checkers") and with_subject.subject_name == "Checkers"
    # the PNG says what it was made with: the prompt as typed, the LoRA's hash and the subject
    with with_subject.images.get().file.open("rb") as f:
        parameters = Image.open(f).text["parameters"]
    short_hash = hashlib.sha256(default_storage.open(run.checkpoint).read()).hexdigest()[:10]
    assert parameters.startswith("a photo of sks shape\n")
    assert parameters.endswith(f', Lora hashes: "sks: {short_hash}", Subject: Checkers')


def test_cancel_a_running_training_leaves_no_checkpoint(owner, workers, media_dir):
    subject = Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    _process(services.add_photos(subject=subject, files=[checkered_photo(i) for i in range(3)]))
    trainer = workers.start(Q_CLUSTER_NAME="training")
    try:
        run = services.start_training(subject=subject, options={"steps": 3000, "prior_preservation": False})
        wait_for(lambda: type(run).objects.get(pk=run.pk).progress_step >= 2, 120, message="training progress")
        assert run.cancel()
        # the task itself returns once it saw the cancel at its next step
        wait_for(lambda: Task.objects.filter(result="canceled").exists(), 60, message="the training task to stop")
        run.refresh_from_db()
    finally:
        trainer.stop()
    assert run.status == JobStatus.CANCELED and not run.checkpoint and run.files_dir
    assert not (media_dir / run.files_dir).exists()
