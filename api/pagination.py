from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    """Page numbers (`?page=2`), 20 a page unless `?page_size=` (at most 100) says otherwise."""

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100
