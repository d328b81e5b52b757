"""One JSON shape for every error: `{"success": false, "error": CODE, "message": TEXT}` with
`fields` for invalid input. Raw borg output never reaches a client."""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.db.models import ProtectedError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_handler

from borgapp import borg, validation
from borgapp.errors import Conflict, Forbidden, TooMany

BORG_STATUS = {
    "wrong_passphrase": 422,
    "integrity_error": 422,
    "access_refused": 422,
    "repository_missing": 404,
    "archive_missing": 404,
    "repository_exists": 409,
    "archive_exists": 409,
    "lock_timeout": 409,
    "disk_full": 507,
}


class ApiError(exceptions.APIException):
    def __init__(self, code: str, message: str, http_status: int):
        super().__init__(detail=message, code=code)
        self.status_code = http_status
        self.error_code = code


def body(code: str, message: str, **extra) -> dict:
    return {"success": False, "error": code, "message": message, **extra}


def status_for_job_error(code: str) -> int:
    """The HTTP status for a job that failed with this error code."""
    if code in BORG_STATUS:
        return BORG_STATUS[code]
    if code in ("invalid_input", "invalid_request"):
        return 400
    if code == "not_found":
        return 404
    if code == "host_unavailable":  # the host's agent did not answer in time
        return 504
    return 502


def handler(exc, context):
    if isinstance(exc, validation.InvalidInput):
        return Response(body("invalid_input", str(exc)), status=400)
    if isinstance(exc, DjangoValidationError):
        fields = getattr(exc, "message_dict", {"non_field_errors": exc.messages})
        return Response(body("invalid_input", "Invalid input.", fields=fields), status=400)
    if isinstance(exc, TooMany):
        return Response(body("too_many", str(exc)), status=429, headers={"Retry-After": "30"})
    if isinstance(exc, Conflict):
        return Response(body("conflict", str(exc)), status=409)
    if isinstance(exc, Forbidden):
        return Response(body("permission_denied", str(exc)), status=403)
    if isinstance(exc, DataError):
        # A value from the request that the database cannot even compare: on PostgreSQL a NUL
        # character in text, a time zone offset or a number out of its range (SQLite takes
        # them and finds nothing). Every route and filter that looks a value up meets it.
        message = "A value is out of range or holds a character that cannot be stored."
        return Response(body("invalid_input", message), status=400)
    if isinstance(exc, ProtectedError):
        users = sorted({str(obj) for obj in exc.protected_objects})[:10]
        message = f"Still in use by: {', '.join(users)}. Change or remove those first."
        return Response(body("in_use", message), status=409)
    if isinstance(exc, borg.BorgError):
        return Response(body(exc.code, exc.message), status=status_for_job_error(exc.code))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ApiError):
        response.data = body(exc.error_code, str(exc.detail))
    elif isinstance(exc, exceptions.ValidationError):
        response.data = body("invalid_input", "Invalid input.", fields=exc.detail)
    else:
        code = getattr(exc, "default_code", "error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        response.data = body(code, detail)
    return response


def not_found(request, exception=None):
    """Django's 404 for URLs no route matches: JSON under /api/, the usual page elsewhere."""
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if request.path.startswith("/api/"):
        return JsonResponse(body("not_found", "No such route or object."), status=404)
    return page_not_found(request, exception)


def server_error(request):
    from django.http import JsonResponse
    from django.views.defaults import server_error as default

    if request.path.startswith("/api/"):
        return JsonResponse(
            body("internal_error", "Internal error; see the server log."), status=500
        )
    return default(request)
