"""A prompt's `<lora:…>` tags are resolved in a fixed number of queries, however many tags name
uploaded LoRAs or subjects, and so is the list of subjects whose LoRA a prompt may name (issue 16's
prompt LoRAs; the rows are made by hand, no weights are read)."""
from __future__ import annotations

import pytest

from generation.models import Lora
from generation.prompt_files import lora_subjects, resolve_prompt_files
from imagesite.jobs import JobStatus
from training.models import Subject, TrainingRun

pytestmark = pytest.mark.django_db


def _subject_with_lora(owner, token: str, noun: str) -> tuple[Subject, TrainingRun]:
    subject = Subject.objects.create(owner=owner, name=token.title(), token=token, class_noun=noun)
    TrainingRun.objects.create(subject=subject, status=JobStatus.FAILED)  # not the trained run
    run = TrainingRun.objects.create(subject=subject, status=JobStatus.SUCCEEDED, checkpoint=f"runs/{token}.safetensors")
    return subject, run


def test_a_prompt_with_three_tags_is_resolved_in_four_queries(owner, django_assert_num_queries):
    ink = Lora.objects.create(owner=owner, name="ink", file="loras/ink.safetensors", sha256="ab" * 32)
    rex, rex_run = _subject_with_lora(owner, "sks", "dog")
    tom, tom_run = _subject_with_lora(owner, "zwx", "cat")
    prompt = f"<lora:ink:1> <lora:SKS:0.5> <lora:zwx-cat-lora-run{tom_run.pk}:0.8>"
    # The LoRAs named, the subjects named by a download's run, the subjects, their trained runs.
    with django_assert_num_queries(4):
        loras, embeddings = resolve_prompt_files(owner, prompt, "", None)
    assert [(e["kind"], e["id"], e.get("run"), e["weight"]) for e in loras] == [
        ("lora", ink.pk, None, 1.0), ("subject", rex.pk, rex_run.pk, 0.5), ("subject", tom.pk, tom_run.pk, 0.8)]
    assert embeddings == []


def test_unknown_tags_read_the_names_to_offer_once(owner, django_assert_num_queries):
    from django.core.exceptions import ValidationError

    _subject_with_lora(owner, "sks", "dog")
    # The LoRAs named, the subjects named; for the hint: LoRA names, subjects with a LoRA, their runs.
    with django_assert_num_queries(5), pytest.raises(ValidationError) as caught:
        resolve_prompt_files(owner, "<lora:a:1> <lora:b:1> <lora:c:1>", "", None)
    assert len(caught.value.message_dict["prompt"]) == 3 and all("use one of: sks" in m for m in caught.value.message_dict["prompt"])


def test_the_subjects_a_prompt_may_name_are_listed_in_two_queries(owner, django_assert_num_queries):
    for token, noun in (("sks", "dog"), ("zwx", "cat"), ("qqz", "toy")):
        _subject_with_lora(owner, token, noun)
    Subject.objects.create(owner=owner, name="Untrained", token="nnn", class_noun="car")
    with django_assert_num_queries(2):
        assert [s.token for s in lora_subjects(owner)] == ["qqz", "sks", "zwx"]
