"""Find any file in any archive, and the history of one path (the file index, issue 16):
GET /api/v1/files/?q=PATTERN[&repository=NAME&type=&min_size=&max_size=&modified_after=
&modified_before=&archived_after=&archived_before=&limit=] and
GET /api/v1/files/history/?repository=NAME&path=PATH. Viewers may search: the index holds
only what the archive listings show them already."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from borgapp import filesearch, validation
from borgapp.api.errors import ApiError
from borgapp.api.views import named
from borgapp.models import Repository

SEARCH_PARAMS = [
    OpenApiParameter("q", str, required=True,
                     description="a name or path fragment, a glob, or a folder ending in /"),
    OpenApiParameter("repository", str, description="one repository (default: all)"),
    OpenApiParameter("type", str, description="file, folder or link"),
    OpenApiParameter("min_size", int), OpenApiParameter("max_size", int),
    OpenApiParameter("modified_after", str), OpenApiParameter("modified_before", str),
    OpenApiParameter("archived_after", str), OpenApiParameter("archived_before", str),
    OpenApiParameter("limit", int, description="paths in the answer (1-1000, default 100)"),
]  # fmt: skip


def _repository(name) -> Repository | None:
    return named(Repository, name, "repository")


class FilesViewSet(viewsets.ViewSet):
    read_role = "viewer"

    @extend_schema(parameters=SEARCH_PARAMS, responses={200: dict})
    def list(self, request):
        """Paths whose name or path matches, with every version and the archives holding it;
        `index` says how many archives are not indexed yet (a lagging index says so)."""
        query = request.query_params
        repository = _repository(query.get("repository"))
        try:
            filters = filesearch.filters_from(query, repository)
            return Response(filesearch.search(query.get("q", ""), filters))
        except validation.InvalidInput as exc:
            raise ApiError("invalid_input", str(exc), 400) from None

    @extend_schema(
        parameters=[OpenApiParameter("repository", str, required=True),
                    OpenApiParameter("path", str, required=True)],
        responses={200: dict},
    )  # fmt: skip
    @action(detail=False, methods=["get"])
    def history(self, request):
        """Every version of one path in a repository's archives, oldest first."""
        query = request.query_params
        repository = _repository(query.get("repository"))
        if repository is None:
            raise ApiError("invalid_input", "Name the repository.", 400)
        try:
            return Response(filesearch.history(repository, query.get("path", "")))
        except validation.InvalidInput as exc:
            raise ApiError("invalid_input", str(exc), 400) from None
