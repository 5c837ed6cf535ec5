"""Middleware: refuse NUL characters in query strings before any view looks them up."""
from __future__ import annotations

from django.http import HttpResponse, JsonResponse

from nexus.errors import error_body


class RejectNulQueryMiddleware:
    """Postgres refuses NUL in text: a `?team=%00` reached a slug lookup and became a 500. Any
    query parameter holding one is a 400 that names it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in v for v in values):
                message = f"{name.replace(chr(0), '')}: must not contain a NUL character (\\u0000)"
                if request.path.startswith("/api/"):
                    return JsonResponse(error_body("validation_error", message, {name.replace(chr(0), ""): message}),
                                        status=400)
                return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
