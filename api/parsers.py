"""The API's body parsers: DRF's, with every failure a 400 in the one error shape.

DRF's JSONParser turns a ValueError into a ParseError, but Python's json module raises RecursionError
on a deeply nested body (`[[[[…` 50,000 deep), which escaped as a 500. No request of this API nests
more than a few levels, so a body deeper than MAX_JSON_DEPTH is refused before anything walks it.
Body size, field and file counts are Django's DATA_UPLOAD_* limits (api.errors names them)."""
from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_JSON_DEPTH = 32
TOO_DEEP = f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels."


def _depth_within(value: object, limit: int) -> bool:
    """Whether `value` nests at most `limit` arrays/objects deep (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(TOO_DEEP) from None
        if not _depth_within(data, MAX_JSON_DEPTH):
            raise ParseError(TOO_DEEP)
        return data
