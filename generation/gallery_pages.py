"""The gallery's pages: keyset pages of the owner's images, newest first (api.pagination's
newest_first_page, served by the (owner, -created_at, -id) index), so that a page costs the same
at 10,000 images as at 100 (issue 18): no OFFSET, no COUNT. Links carry a key instead of a page
number: `?older=<key>` (the next, older page), `?newer=<key>` (back towards the newest),
`?oldest=1` (the last page). The filters in the query stay in every link."""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet
from django.http import QueryDict

from api.pagination import Key, newest_first_page

PAGE_PARAMS = ("older", "newer", "oldest", "page")  # `page`: links from before keyset pages


@dataclass(frozen=True)
class GalleryPage:
    """One page of images and the links around it (None where there is nowhere to go)."""

    object_list: list
    newest_url: str | None
    newer_url: str | None
    older_url: str | None
    oldest_url: str | None

    @property
    def has_other_pages(self) -> bool:
        return bool(self.newer_url or self.older_url)


def gallery_page(images: QuerySet, query: QueryDict, *, size: int) -> GalleryPage:
    """The page of `images` the query asks for. A malformed key is left out, as a bad filter is: the
    newest page is shown. Links are relative ("?…") and keep the query's filters."""
    older, newer = Key.parse(query.get("older")), Key.parse(query.get("newer"))
    if older is not None:
        page = newest_first_page(images, size, after=older)
    elif newer is not None:
        page = newest_first_page(images, size, before=newer)
    else:
        page = newest_first_page(images, size, oldest=query.get("oldest") == "1")
    kept = query.copy()
    for name in PAGE_PARAMS:
        kept.pop(name, None)

    def link(**param: str) -> str:
        linked = kept.copy()
        linked.update(param)
        return f"?{linked.urlencode()}"

    return GalleryPage(
        object_list=page.rows,
        newest_url=link() if page.newer else None,
        newer_url=link(newer=page.newer.token()) if page.newer else None,
        older_url=link(older=page.older.token()) if page.older else None,
        oldest_url=link(oldest="1") if page.older else None,
    )
