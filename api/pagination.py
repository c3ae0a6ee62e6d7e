"""The API's pagination: page numbers for short lists, and keyset pages (cursors) for the lists that
grow without bound (images, generations), whose cost must not grow with the row count: a keyset page
starts from the last row seen through an index on (owner, -created_at, -id), where an OFFSET would
walk every row before it and a COUNT every row there is (issue 18)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from django.db.models import Q, QuerySet
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination, PageNumberPagination

from .views import parse_id  # a page number is read as strictly as an id: ASCII digits, from 1

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_KEY = re.compile(r"(-?[0-9]{1,18})_([0-9]{1,19})")
_MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Key:
    """A row's place in newest-first order: its created_at, then its id (rows made in the same
    microsecond keep one order)."""

    created_at: datetime
    pk: int

    @classmethod
    def of(cls, row) -> "Key":
        return cls(row.created_at, row.pk)

    def token(self) -> str:
        """`<microseconds since 1970, UTC>_<id>`: exact (no float), short, URL-safe."""
        return f"{(self.created_at - _EPOCH) // _MICROSECOND}_{self.pk}"

    @classmethod
    def parse(cls, token: str | None) -> "Key | None":
        """The key a token names, or None when it is malformed (never an exception)."""
        found = _KEY.fullmatch(token or "")
        if not found or int(found.group(2)) > _MAX_ID:
            return None
        try:
            return cls(_EPOCH + int(found.group(1)) * _MICROSECOND, int(found.group(2)))
        except OverflowError:
            return None

    def older(self) -> Q:
        """Rows after this one in newest-first order. `created_at <= c` first, so that the index
        serves it as a range."""
        return Q(created_at__lte=self.created_at) & (Q(created_at__lt=self.created_at) | Q(pk__lt=self.pk))

    def newer(self) -> Q:
        return Q(created_at__gte=self.created_at) & (Q(created_at__gt=self.created_at) | Q(pk__gt=self.pk))

    def shifted(self, ids: int) -> "Key":
        """The place `ids` ids away at the same time: shifted(-1).newer() includes this key's row."""
        return Key(self.created_at, self.pk + ids)


@dataclass(frozen=True)
class KeysetPage:
    """Up to `size` rows, newest first, and the keys to continue from: `older` (its last row) when
    older rows exist, `newer` (its first row) when newer rows exist; None when there are none."""

    rows: list
    older: Key | None
    newer: Key | None


def newest_first_page(queryset: QuerySet, size: int, *, after: Key | None = None, before: Key | None = None,
                      oldest: bool = False) -> KeysetPage:
    """A page of `queryset` (rows with created_at and an id) newest first: the newest rows (no key),
    the rows just older than `after`, the rows just newer than `before`, or with `oldest` the oldest
    rows. One query for the rows (size + 1 of them: the extra one says whether more lie that way)
    and, away from the newest or oldest end, one EXISTS for the other way; never a COUNT or an
    OFFSET. A key whose row is gone still works: its place in the order is all it stands for."""
    newest_first = queryset.order_by("-created_at", "-pk")
    if before is None and not oldest:
        rows = list(newest_first.filter(after.older() if after else Q())[:size + 1])
        more_older, rows = len(rows) > size, rows[:size]
        # nothing older left: the newer link starts at the key's own row (shifted by one id)
        top = Key.of(rows[0]) if rows else after and after.shifted(-1)
        bottom = Key.of(rows[-1]) if rows else None
        more_newer = after is not None and top is not None and newest_first.filter(top.newer()).exists()
    else:
        rows = list(queryset.filter(before.newer() if before else Q()).order_by("created_at", "pk")[:size + 1])
        more_newer, rows = len(rows) > size, rows[:size][::-1]
        top = Key.of(rows[0]) if rows else None
        bottom = Key.of(rows[-1]) if rows else before and before.shifted(1)
        more_older = before is not None and bottom is not None and newest_first.filter(bottom.older()).exists()
    return KeysetPage(rows, older=bottom if more_older else None, newer=top if more_newer else None)


class _StrictPageSize:
    """20 a page unless `?page_size=` (1 to 100) says otherwise; a malformed page size is a 400,
    never ignored. The schema states the bounds."""

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request) -> int:
        value = request.query_params.get(self.page_size_query_param)
        if value is None:
            return self.page_size
        size = parse_id(value)
        if size is None or size > self.max_page_size:
            raise ValidationError({self.page_size_query_param: [f"A whole number from 1 to {self.max_page_size}."]})
        return size

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters


class Pagination(_StrictPageSize, PageNumberPagination):
    """Page numbers (`?page=2`) with a `count`, for lists that stay short (subjects, runs, tokens,
    webhook deliveries). A page that does not exist is a 404, as the schema says."""

    last_page_strings = ()  # `?page=last` is no integer

    def get_page_number(self, request, paginator) -> int:
        value = request.query_params.get(self.page_query_param)
        if value is None:
            return 1
        number = parse_id(value)
        if number is None:
            raise NotFound(self.invalid_page_message)
        return number

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
        return parameters


class NewestFirstCursorPagination(_StrictPageSize, CursorPagination):
    """Keyset pages, newest first, for lists that grow without bound: `{"next", "previous",
    "results"}`, where `next` (older rows) and `previous` (newer rows) are links to follow, null at
    either end; no `count`. The cursor is opaque to clients (DRF's base64 form, its position our
    Key token); a malformed one is a 404. Rows added or deleted meanwhile never make a row appear
    twice or be skipped, as page numbers would. The view's queryset needs created_at and an id."""

    ordering = ("-created_at", "-pk")
    invalid_cursor_message = "Invalid cursor: follow the next and previous links as given."

    def paginate_queryset(self, queryset, request, view=None) -> list:
        self.request, self.base_url = request, request.build_absolute_uri()
        cursor = self.decode_cursor(request)
        key = None
        if cursor is not None:
            key = Key.parse(cursor.position)
            if key is None or cursor.offset:
                raise NotFound(self.invalid_cursor_message)
        self.page_size = self.get_page_size(request)
        reverse = cursor is not None and cursor.reverse
        self.keyset = newest_first_page(queryset, self.page_size, after=None if reverse else key, before=key if reverse else None)
        self.has_next, self.has_previous = self.keyset.older is not None, self.keyset.newer is not None
        return self.keyset.rows

    def get_next_link(self) -> str | None:
        older = self.keyset.older
        return None if older is None else self.encode_cursor(Cursor(offset=0, reverse=False, position=older.token()))

    def get_previous_link(self) -> str | None:
        newer = self.keyset.newer
        return None if newer is None else self.encode_cursor(Cursor(offset=0, reverse=True, position=newer.token()))
