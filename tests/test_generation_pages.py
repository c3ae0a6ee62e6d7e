"""Every page: the owner, another user (404), anonymous (login redirect), the wrong method."""
from __future__ import annotations

import pytest
from django.urls import reverse
from django_q.models import OrmQ

from generation.models import GeneratedImage, Generation
from imagesite.jobs import JobStatus

from .factories import make_generation, make_image

pytestmark = pytest.mark.django_db


def _urls(image):
    g = image.generation
    return {
        "generation-detail": (reverse("generation-detail", args=[g.pk]), "get"),
        "generation-cancel": (reverse("generation-cancel", args=[g.pk]), "post"),
        "generation-delete": (reverse("generation-delete", args=[g.pk]), "post"),
        "image-detail": (reverse("image-detail", args=[image.pk]), "get"),
        "image-file": (reverse("image-file", args=[image.pk]), "get"),
        "image-thumbnail": (reverse("image-thumbnail", args=[image.pk]), "get"),
        "image-delete": (reverse("image-delete", args=[image.pk]), "post"),
        "image-favourite": (reverse("image-favourite", args=[image.pk]), "post"),
    }


PAGES = ["generation-detail", "generation-cancel", "generation-delete", "image-detail", "image-file", "image-thumbnail", "image-delete", "image-favourite"]


@pytest.mark.parametrize("name", PAGES)
def test_other_user_gets_404(name, owner, other_client):
    url, method = _urls(make_image(owner))[name]
    assert getattr(other_client, method)(url, {"favourite": "1"} if method == "post" else {}).status_code == 404
    assert GeneratedImage.objects.count() == 1 and Generation.objects.count() == 1 and not GeneratedImage.objects.get().favourite


@pytest.mark.parametrize("name", PAGES)
def test_anonymous_is_sent_to_login(name, owner, client):
    url, method = _urls(make_image(owner))[name]
    response = getattr(client, method)(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", PAGES)
def test_wrong_method_is_405(name, owner, owner_client):
    url, method = _urls(make_image(owner))[name]
    wrong = owner_client.post if method == "get" else owner_client.get
    assert wrong(url).status_code == 405


@pytest.mark.parametrize("url", ["/", "/gallery/"])
def test_anonymous_lists_redirect_to_login(client, url):
    assert client.get(url)["Location"].startswith(reverse("login"))


def test_gallery_and_generate_reject_wrong_methods(owner_client):
    assert owner_client.post(reverse("gallery")).status_code == 405
    assert owner_client.put(reverse("generation-new")).status_code == 405


def test_owner_sees_job_page_with_settings(owner, owner_client):
    image = make_image(owner, prompt="a green star on a white background")
    response = owner_client.get(reverse("generation-detail", args=[image.generation_id]))
    assert response.status_code == 200
    assert b"a green star on a white background" in response.content
    assert reverse("image-file", args=[image.pk]).encode() in response.content


def test_running_job_page_polls_and_offers_cancel(owner, owner_client):
    generation = make_generation(owner, status=JobStatus.RUNNING, progress_step=3, progress_total=10)
    response = owner_client.get(reverse("generation-detail", args=[generation.pk]))
    assert b'hx-trigger="every 1s"' in response.content
    assert b"step 3 of 10" in response.content
    assert reverse("generation-cancel", args=[generation.pk]).encode() in response.content
    partial = owner_client.get(reverse("generation-detail", args=[generation.pk]), HTTP_HX_REQUEST="true")
    assert b"<html" not in partial.content and b'id="job-status"' in partial.content


def test_failed_job_shows_the_readable_error(owner, owner_client):
    generation = make_generation(owner, status=JobStatus.FAILED, error="Out of GPU memory at 512×512.")
    response = owner_client.get(reverse("generation-detail", args=[generation.pk]))
    assert "Out of GPU memory at 512×512." in response.content.decode()
    assert b"hx-trigger" not in response.content


def test_gallery_lists_only_own_images_newest_first_and_searches(owner, other_user, owner_client):
    older = make_image(owner, prompt="a red circle on a blue background")
    newer = make_image(owner, prompt="a yellow star on a purple background")
    theirs = make_image(other_user, prompt="a red circle secret")
    page = owner_client.get(reverse("gallery")).context["page"]
    assert list(page.object_list) == [newer, older]
    found = owner_client.get(reverse("gallery"), {"q": "circle"}).context["page"]
    assert list(found.object_list) == [older]
    assert theirs not in found.object_list


def test_gallery_search_matches_every_word_in_any_order_ignoring_case(owner, owner_client):
    heart = make_image(owner, prompt="a white heart on a Green background")
    make_image(owner, prompt="a green circle")
    make_image(owner, prompt="a white heart on a red background")
    for query in ("green heart", "HEART   green", "heart green heart", '"white heart" green'):
        assert list(owner_client.get(reverse("gallery"), {"q": query}).context["page"].object_list) == [heart], query
    assert list(owner_client.get(reverse("gallery"), {"q": '"green heart"'}).context["page"].object_list) == []  # a quoted phrase stays whole
    assert list(owner_client.get(reverse("gallery"), {"q": "heart 50%"}).context["page"].object_list) == []  # % is a character, not a wildcard
    assert len(owner_client.get(reverse("gallery"), {"q": "  "}).context["page"].object_list) == 3


def test_star_an_image_and_show_only_favourites(owner, owner_client):
    circle = make_image(owner, prompt="a red circle on a blue background")
    star = make_image(owner, prompt="a yellow star on a purple background")
    response = owner_client.post(reverse("image-favourite", args=[circle.pk]), {"favourite": "1"})
    assert response["Location"] == circle.get_absolute_url()
    circle.refresh_from_db()
    assert circle.favourite
    page = owner_client.get(circle.get_absolute_url()).content.decode()
    assert "★ Favourite" in page and 'name="favourite" value="0"' in page  # the button now unmarks it
    gallery = owner_client.get(reverse("gallery"), {"favourites": "1"})
    assert list(gallery.context["page"].object_list) == [circle]
    assert list(owner_client.get(reverse("gallery"), {"favourites": "1", "q": "star"}).context["page"].object_list) == []
    assert 'title="Favourite">★' in owner_client.get(reverse("gallery")).content.decode()
    refused = owner_client.post(reverse("image-favourite", args=[circle.pk]), {"favourite": "yes"})
    assert refused.status_code == 400 and b"favourite=1" in refused.content
    circle.refresh_from_db()
    assert circle.favourite
    owner_client.post(reverse("image-favourite", args=[circle.pk]), {"favourite": "0"})
    circle.refresh_from_db()
    assert not circle.favourite and not star.favourite
    assert "No favourite images." in owner_client.get(reverse("gallery"), {"favourites": "1"}).content.decode()


def test_gallery_paginates(owner, owner_client):
    generation = make_generation(owner, status=JobStatus.SUCCEEDED, num_images=1)
    for _ in range(25):
        make_image(owner, generation=generation)
    first = owner_client.get(reverse("gallery")).context["page"]
    second = owner_client.get(reverse("gallery") + first.older_url).context["page"]
    assert len(first.object_list) == 24 and len(second.object_list) == 1
    # the favourites filter stays on from page to page
    GeneratedImage.objects.update(favourite=True)
    assert 'href="?favourites=1&amp;older=' in owner_client.get(reverse("gallery"), {"favourites": "1"}).content.decode()


def test_image_file_is_served_privately_and_downloads(owner, owner_client):
    image = make_image(owner)
    response = owner_client.get(reverse("image-file", args=[image.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")
    download = owner_client.get(reverse("image-file", args=[image.pk]), {"download": 1})
    assert download["Content-Disposition"].startswith("attachment;")


def test_no_public_media_url(owner, client, owner_client):
    image = make_image(owner)
    for c in (client, owner_client):
        assert c.get("/media/" + image.file.name).status_code == 404
        assert c.get("/private-media-is-not-served/" + image.file.name).status_code == 404


def test_x_accel_redirect_hands_the_file_to_nginx(owner, owner_client, settings):
    settings.IMAGESITE_X_ACCEL_REDIRECT = "/protected/"
    image = make_image(owner)
    response = owner_client.get(reverse("image-file", args=[image.pk]))
    assert response["X-Accel-Redirect"] == "/protected/" + image.file.name
    assert response.content == b""


def test_deleting_an_image_deletes_its_files(owner, owner_client, django_capture_on_commit_callbacks):
    image = make_image(owner)
    paths = [image.file.path, image.thumbnail.path]
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(reverse("image-delete", args=[image.pk]))
    assert response.status_code == 302
    assert not GeneratedImage.objects.exists()
    assert not any(__import__("os").path.exists(p) for p in paths)


def test_deleting_a_generation_deletes_images_and_files(owner, owner_client, django_capture_on_commit_callbacks):
    image = make_image(owner)
    make_image(owner, generation=image.generation)
    paths = [i.file.path for i in GeneratedImage.objects.all()]
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post(reverse("generation-delete", args=[image.generation_id]))
    assert not Generation.objects.exists() and not GeneratedImage.objects.exists()
    assert not any(__import__("os").path.exists(p) for p in paths)


def test_deleting_the_account_deletes_files(owner, django_capture_on_commit_callbacks):
    image = make_image(owner)
    path = image.file.path
    with django_capture_on_commit_callbacks(execute=True):
        owner.delete()
    assert not __import__("os").path.exists(path)


def test_cancel_queued_job_ends_at_once(owner, owner_client):
    generation = make_generation(owner)
    owner_client.post(reverse("generation-cancel", args=[generation.pk]))
    generation.refresh_from_db()
    assert generation.status == JobStatus.CANCELED and generation.finished_at is not None


def test_cancel_finished_job_changes_nothing(owner, owner_client):
    generation = make_generation(owner, status=JobStatus.SUCCEEDED)
    owner_client.post(reverse("generation-cancel", args=[generation.pk]))
    generation.refresh_from_db()
    assert generation.status == JobStatus.SUCCEEDED


def test_generate_again_fills_the_form(owner, owner_client):
    generation = make_generation(owner, prompt="a white heart on a green background", seed=1234, steps=9, scheduler="ddim")
    form = owner_client.get(reverse("generation-new"), {"again": generation.pk}).context["form"]
    assert form.initial["prompt"] == "a white heart on a green background"
    assert form.initial["seed"] == 1234 and form.initial["steps"] == 9 and form.initial["scheduler"] == "ddim"


def test_generate_again_with_someone_elses_job_fills_nothing(owner, other_client):
    generation = make_generation(owner, prompt="private prompt")
    response = other_client.get(reverse("generation-new"), {"again": generation.pk})
    assert b"private prompt" not in response.content


def test_signup_login_logout_and_password_change(client, django_user_model):
    response = client.post(reverse("signup"), {"username": "newbie", "password1": "a-long-unique-pass-42", "password2": "a-long-unique-pass-42"})
    assert response.status_code == 302
    assert client.get(reverse("gallery")).status_code == 200
    response = client.post(reverse("password_change"), {"old_password": "a-long-unique-pass-42", "new_password1": "another-pass-4242", "new_password2": "another-pass-4242"})
    assert response.status_code == 302
    client.post(reverse("logout"))
    assert client.get(reverse("gallery")).status_code == 302
    assert client.login(username="newbie", password="another-pass-4242")


def test_signup_errors_come_back_on_the_form(client, django_user_model):
    response = client.post(reverse("signup"), {"username": "x", "password1": "short", "password2": "different"})
    assert response.status_code == 200 and response.context["form"].errors
    assert not django_user_model.objects.exists()
    assert OrmQ.objects.count() == 0
