"""What every app's API views share: ids in URLs, owner-scoped viewsets, file downloads, the status
filter. Every queryset is the request user's own rows, so another user's ids are 404 (never 403: no
existence oracle). Each app keeps its own views in its `api.py`."""
from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request

from imagesite.jobs import JobStatus


class FileNegotiation(BaseContentNegotiation):
    """Downloads answer any Accept header (image/png, */*...): the file itself bypasses rendering, and
    an error is still JSON, the one error shape."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


MAX_ID = 2**63 - 1  # larger ids cannot exist, and SQLite raises OverflowError on them


# How the schema declares every id, in a path or a query (api.schema applies it to path ids).
ID_SCHEMA = {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID}


def parse_id(value: str) -> int | None:
    """An id as the schema states it (ASCII digits, 1 to MAX_ID), or None: the caller answers 404 in
    a path, 400 in a query."""
    digits = value.lstrip("0")
    if not (value.isascii() and value.isdigit() and 0 < len(digits) <= len(str(MAX_ID))):
        return None
    return int(digits) if int(digits) <= MAX_ID else None


def id_param(name: str, description: str) -> OpenApiParameter:
    """A query parameter that filters by an id (`?generation=3`)."""
    return OpenApiParameter(name, ID_SCHEMA, description=description)


class OwnedViewSetMixin:
    # Ids are digits only in URLs (router regex); one too large for the database is simply absent.
    # (A comment, not a docstring: drf-spectacular would show a docstring in every operation.)

    lookup_value_regex = "[0-9]+"

    def get_object(self):
        if parse_id(self.kwargs[self.lookup_url_kwarg or self.lookup_field]) is None:
            raise Http404
        return super().get_object()

    def is_schema_request(self) -> bool:
        # drf-spectacular inspects views with an anonymous fake request.
        return getattr(self, "swagger_fake_view", False)


STATUS_PARAM = OpenApiParameter("status", str, enum=[c for c, _ in JobStatus.choices], description="Only jobs in this status.")


def filter_by_id(queryset: QuerySet, request: Request, param: str) -> QuerySet:
    """`?<param>=<id>` keeps the rows whose `<param>_id` is that id (a malformed id is a 400 on it)."""
    if param not in request.query_params:
        return queryset
    value = parse_id(request.query_params[param])
    if value is None:
        raise serializers.ValidationError({param: [f"A {param} id."]})
    return queryset.filter(**{f"{param}_id": value})


def filter_status(queryset: QuerySet, request: Request) -> QuerySet:
    value = request.query_params.get("status")
    if value is None:
        return queryset
    if value not in JobStatus.values:
        raise serializers.ValidationError({"status": [f"Choose one of {', '.join(JobStatus.values)}."]})
    return queryset.filter(status=value)
