"""Property-based tests of the whole API against its own live OpenAPI schema (schemathesis): no 5xx,
every response matches the schema (status codes, content types, bodies, headers), and the schema
states the rules the server enforces: schema-valid input is accepted (positive data) and
schema-violating input is refused (negative data).

One test per operation, loaded from the schema the running app serves. Kept to a minute or two: few
examples per operation and no shrinking (the first failing example is reported as found)."""
from __future__ import annotations

import ipaddress

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from schemathesis.checks import positive_data_acceptance
from hypothesis import HealthCheck, Phase, settings

from api import webhooks
from api.models import ApiToken
from api.webhooks import PRIVATE_REFUSED
from imagesite.wsgi import application

from training.models import Subject

from .factories import make_generation, make_image

MAX_EXAMPLES = 10

# Loaded at collection through the WSGI app (the schema view needs no database).
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)


PUBLIC_ADDRESS = "93.184.215.14"
# Rules that hang on stored data or the outside world, which no schema can state: each is a 400 on
# exactly these fields, with the reason in `errors`. Anything else schema-valid must be accepted.
DATA_DEPENDENT_FIELDS = {
    # One of *your* trained subjects and images; a base model offered; the hires size within that model's
    # limit; input and mask files that are images of one size.
    ("POST", "/api/v1/generations/"): {"subject", "base_model", "hires_scale", "source_image", "init_image", "mask"},
    ("POST", "/api/v1/subjects/"): {"token"},  # not a word the model knows (its vocabulary)
    ("POST", "/api/v1/subjects/{id}/photos/"): {"photos"},  # the files must be images
    # Prior preservation (on or off by the model's default) needs class images. (A name already used,
    # too few photos or a run in progress are 409s: stored state, which positive data may meet.)
    ("POST", "/api/v1/subjects/{id}/train/"): {"num_class_images", "prior_preservation", "base_model"},
    ("PATCH", "/api/v1/subjects/{id}/photos/{photo_id}/"): {"caption", "non_field_errors"},  # names the subject's token
    ("POST", "/api/v1/png-info/"): {"image"},  # the file must be a PNG that carries generation settings
    # The file must be a .safetensors whose keys fit a LoRA / an embedding; a name may be taken already.
    ("POST", "/api/v1/loras/"): {"file", "name"},
    ("POST", "/api/v1/embeddings/"): {"file", "name"},
}
WEBHOOK_FIELDS = {"webhook_url", "default_webhook_url"}


def _resolve_offline(host: str, port: int) -> list[str]:
    # No DNS here: every host name stands for a public address, as on the Internet; an IP literal is
    # itself, so private ones are still refused (that rule is the server's, beyond any pattern).
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return [PUBLIC_ADDRESS] if host and all(c.isalnum() or c in ".-" for c in host) and host.isascii() else []


def _refused_for_stored_data(case, response) -> bool:
    if response.status_code != 400:
        return False
    errors = set(response.json().get("errors", {}))
    allowed = DATA_DEPENDENT_FIELDS.get((case.method.upper(), case.path), set())
    private_webhook = {f for f in errors & WEBHOOK_FIELDS if PRIVATE_REFUSED in response.json()["errors"][f]}
    return bool(errors) and errors <= allowed | private_webhook


@schemathesis.check
def schema_valid_data_accepted(ctx, response, case):
    """schemathesis's positive_data_acceptance, except the refusals DATA_DEPENDENT_FIELDS lists."""
    if _refused_for_stored_data(case, response):
        return True
    return positive_data_acceptance(ctx, response, case)


@pytest.fixture
def auth_headers(db, owner, other_user, settings, monkeypatch) -> dict[str, str]:
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False  # never POST anywhere from generated URLs (no job ends here)
    monkeypatch.setattr(webhooks, "resolve_host", _resolve_offline)
    # Something to find for the owner, and another user's objects that must stay 404 for them.
    make_image(owner)
    make_generation(owner)
    make_image(other_user)
    Subject.objects.create(owner=owner, name="Checkers", token="ohwx", class_noun="shape")
    _, key = ApiToken.create_for(owner, "schemathesis")
    # Like Django's test client: the WSGI app must not close the test's connection after a request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield {"Authorization": f"Bearer {key}"}
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema(case, auth_headers):
    # Every check runs, negative_data_rejection included; positive_data_acceptance in the form above.
    case.call_and_validate(headers=auth_headers, excluded_checks=[positive_data_acceptance], additional_checks=[schema_valid_data_accepted])
