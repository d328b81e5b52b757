"""A value in a request that the database cannot even compare is the client's mistake: 400
with the reason, never a 500. On PostgreSQL that is a NUL character in text, a time zone
offset or a number out of range (SQLite takes them and finds nothing). The API answers such
requests with its own JSON error (api/errors.py); this middleware covers the admin's pages.
"""

from django.db import DataError
from django.http import HttpResponseBadRequest

MESSAGE = (
    "A value in this request is out of range or holds a character that cannot be stored "
    "(a NUL character, a time zone offset beyond ±15:59, a number too large). Go back and "
    "correct it."
)


class DataErrorMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, DataError):
            return HttpResponseBadRequest(MESSAGE, content_type="text/plain; charset=utf-8")
        return None
