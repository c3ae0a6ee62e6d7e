"""Property-based tests of the whole API against its own live OpenAPI schema (schemathesis): no 5xx,
and every response matches the schema (status codes, content types, bodies, headers).

One test per operation, loaded from the schema the running app serves. Kept to a minute or two: few
examples per operation and no shrinking (the first failing example is reported as found)."""
from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from hypothesis import HealthCheck, Phase, settings

from api.models import ApiToken
from imagesite.wsgi import application

from training.models import Subject

from .factories import make_generation, make_image

MAX_EXAMPLES = 10

# Loaded at collection through the WSGI app (the schema view needs no database).
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)


@pytest.fixture
def auth_headers(db, owner, other_user, settings) -> dict[str, str]:
    settings.IMAGESITE_WEBHOOK_ALLOW_PRIVATE = False  # never POST anywhere from generated URLs
    # Something to find for the owner, and another user's objects that must stay 404 for them.
    make_image(owner)
    make_generation(owner)
    make_image(other_user)
    Subject.objects.create(owner=owner, name="Checkers", token="sks", class_noun="shape")
    _, key = ApiToken.create_for(owner, "schemathesis")
    # Like Django's test client: the WSGI app must not close the test's connection after a request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield {"Authorization": f"Bearer {key}"}
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema(case, auth_headers):
    # Whether input is accepted is not only the schema's to say (a webhook host must resolve to a
    # public address, a page must exist), and DRF ignores malformed paging parameters as it always
    # does: those two checks are the endpoint tests' job. Every other check runs.
    case.call_and_validate(headers=auth_headers, excluded_checks=[positive_data_acceptance, negative_data_rejection])
