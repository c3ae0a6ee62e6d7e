"""The whole journey through the API against real workers (a generation cluster and the training
cluster, real qcluster subprocesses on the test database): token → generate → poll → download →
create subject → upload → train a few steps → generate with the subject → delete; with signed
webhooks delivered by the worker to a receiver on 127.0.0.1."""
from __future__ import annotations

import io
import json
import re
import struct

import pytest
from PIL import Image
from rest_framework.test import APIClient

from api import webhooks
from generation.models import GeneratedImage, Generation
from training.models import Subject

from .api_support import checkered_photo, receiver  # noqa: F401  (fixture)
from .conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

FINISHED = {"succeeded", "failed", "canceled"}


def poll(api: APIClient, url: str, timeout: float) -> dict:
    """GET `url` until the job has ended, as a client would."""
    state: dict = {}

    def ended() -> bool:
        state.update(api.get(url).json())
        return state["status"] in FINISHED

    wait_for(ended, timeout, interval=0.5, message=f"{url} to finish")
    return state


def safetensors_keys(data: bytes) -> list[str]:
    (length,) = struct.unpack("<Q", data[:8])
    return [key for key in json.loads(data[8 : 8 + length]) if key != "__metadata__"]


def test_journey_through_the_api(owner, owner_client, spawn_worker, workers, receiver):
    # Workers that may call the receiver on loopback, as the test settings allow in this process.
    spawn_worker(IMAGESITE_WEBHOOK_ALLOW_PRIVATE="1")

    # 1. A token from the account page (shown once).
    page = owner_client.post("/accounts/api/", {"token-name": "journey"}, follow=True).content.decode()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Bearer " + re.search(r"isk_[A-Za-z0-9_-]+", page).group(0))
    secret = api.get("/api/v1/me/webhook-secret/").json()["secret"]

    # 2. Generate, poll, download.
    created = api.post("/api/v1/generations/", {"prompt": "a red circle on a blue background", "seed": 3, "steps": 4, "num_images": 1, "webhook_url": receiver.url}, format="json")
    assert created.status_code == 202
    job = poll(api, created.json()["url"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    download = api.get(job["images"][0]["file_url"])
    png = Image.open(io.BytesIO(b"".join(download.streaming_content)))
    assert png.format == "PNG" and "Seed: 3" in png.info["parameters"]

    # The worker delivered the signed webhook.
    wait_for(lambda: receiver.received, 60, message="the generation webhook")
    hook = receiver.received[0]
    assert webhooks.verify(secret, hook["headers"]["X-Imagesite-Timestamp"], hook["body"], hook["headers"]["X-Imagesite-Signature"])
    assert json.loads(hook["body"])["event"] == "generation.succeeded"
    # The receiver holds the body before the worker has read the reply and recorded the attempt.
    delivery = wait_for(lambda: next((d for d in api.get("/api/v1/webhook-deliveries/").json()["results"] if d["status"] != "pending"), None), 30, message="the delivery's outcome")
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1

    # 3. A subject, its photos, a short training run on the training cluster.
    subject = api.post("/api/v1/subjects/", {"name": "Checkers", "class_noun": "shape"}, format="json").json()
    upload = api.post(subject["photos_url"], {"photos": [checkered_photo(i) for i in range(3)]}, format="multipart")
    assert upload.status_code == 202 and len(upload.json()["accepted"]) == 3
    # The generation worker checks and crops them (the request only read their headers).
    def checked_photos():
        photos = api.get(subject["photos_url"]).json()
        return photos if all(photo["status"] == "ready" for photo in photos) else None

    photos = wait_for(checked_photos, 120, message="the photos to be checked")
    assert all(api.get(photo["crop_url"]).status_code == 200 for photo in photos)
    trainer = workers.start(Q_CLUSTER_NAME="training", IMAGESITE_WEBHOOK_ALLOW_PRIVATE="1")
    try:
        started = api.post(subject["train_url"], {"steps": 12, "prior_preservation": False, "learning_rate": 5e-3, "webhook_url": receiver.url}, format="json")
        assert started.status_code == 202
        run = poll(api, started.json()["url"], timeout=400)
    finally:
        trainer.stop()
    assert run["status"] == "succeeded", run["error"]
    assert run["loss"] is not None and run["progress"]["total"] == run["progress"]["step"] == 12
    lora = b"".join(api.get(run["checkpoint_url"]).streaming_content)
    assert any("lora" in key for key in safetensors_keys(lora))
    embedding = b"".join(api.get(run["token_embedding_url"]).streaming_content)  # pivotal tuning: the token's rows
    assert safetensors_keys(embedding) == ["emb_params"]
    assert len(lora) + len(embedding) == run["checkpoint_size"]  # the size shown counts everything stored
    wait_for(lambda: len(receiver.received) >= 2, 60, message="the training webhook")
    assert json.loads(receiver.received[1]["body"])["event"] == "training_run.succeeded"

    # 4. Generate with the subject.
    assert api.get(subject["url"]).json()["state"] == "trained"
    created = api.post("/api/v1/generations/", {"prompt": "a photo of sks shape", "seed": 4, "steps": 4, "subject": subject["id"]}, format="json")
    assert created.status_code == 202, created.json()
    with_subject = poll(api, created.json()["url"], timeout=180)
    assert with_subject["status"] == "succeeded", with_subject["error"]
    assert with_subject["subject"] == subject["id"] and with_subject["subject_name"] == "Checkers"

    # 5. Delete: the subject goes (its images stay, saying so), then the generations.
    assert api.delete(subject["url"]).status_code == 204
    assert not Subject.objects.exists()
    image = api.get(with_subject["images"][0]["url"]).json()
    assert image["subject"] is None and image["subject_name"] == "Checkers"
    for generation_id in list(Generation.objects.filter(owner=owner).values_list("pk", flat=True)):
        assert api.delete(f"/api/v1/generations/{generation_id}/").status_code == 204
    assert api.get("/api/v1/images/").json()["results"] == [] and not GeneratedImage.objects.exists()
