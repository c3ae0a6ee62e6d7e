from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination

from .views import parse_id  # a page number is read as strictly as an id: ASCII digits, from 1


class Pagination(PageNumberPagination):
    """Page numbers (`?page=2`), 20 a page unless `?page_size=` (1 to 100) says otherwise. A malformed
    page size is a 400 and a page that does not exist a 404, as the schema says: never ignored."""

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100
    last_page_strings = ()  # `?page=last` is no integer

    def get_page_size(self, request) -> int:
        value = request.query_params.get(self.page_size_query_param)
        if value is None:
            return self.page_size
        size = parse_id(value)
        if size is None or size > self.max_page_size:
            raise ValidationError({self.page_size_query_param: [f"A whole number from 1 to {self.max_page_size}."]})
        return size

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
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"]["maximum"] = self.max_page_size
        return parameters
