"""A Content-Security-Policy on every response (issue 10, finding 13).

Every script, style sheet, image and font of the admin and of the API's Swagger UI is served by
the app itself (Swagger UI from drf-spectacular-sidecar), and none of the app's own templates
has an inline script, an inline style or a style attribute: the policy allows nothing from
anywhere else (images may also be data: URLs, for Swagger UI's icons) and no inline code,
and no page may frame the app. Django 5.2 has no CSP of its
own (that comes with Django 6.0).
"""

POLICY = "; ".join(
    [
        "default-src 'self'",
        # Swagger UI's style sheet draws its icons as data: images (no host, and an image
        # runs no code)
        "img-src 'self' data:",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ]
)


class ContentSecurityPolicyMiddleware:
    """First in MIDDLEWARE, so that answers made by later middleware (static files, redirects,
    errors) carry it too. A response that sets its own policy keeps it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", POLICY)
        return response
