"""Admin routing: path → handler, Envoy's method rule, ``/help`` and the ``/`` page.

Rules (envoy-subset.md §8):

* The path before ``?`` must *equal* a route's path; otherwise 404 with the body
  ``invalid path. `` followed by the help text.
* A route that changes server state accepts only POST; any other method gets 405
  ``Method GET not allowed, POST required.`` and the handler is not called.
* Read-only routes accept GET, HEAD and POST (Envoy does not restrict them); other
  methods get 405.
* ``/help`` lists every route, sorted, with its parameters; ``/`` is an HTML index in
  which read-only routes are links and mutating ones are POST forms: nothing on the page
  changes state through a GET.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from meshproxy.admin.http import Handler, Request, Response

HTML = "text/html; charset=UTF-8"
_READ_METHODS = frozenset({"GET", "HEAD", "POST"})


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    help: str
    handler: Handler
    mutates: bool = False
    params: tuple[tuple[str, str], ...] = ()


class Router:
    """Dispatches requests to routes (see the module docstring)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = {r.path: r for r in routes}
        self._routes.setdefault("/help", Route("/help", "print out list of admin commands", self._help))
        self._routes.setdefault("/", Route("/", "Admin home page", self._index))
        self._sorted = sorted(self._routes.values(), key=lambda r: r.path)

    def __call__(self, request: Request) -> Response:
        route = self._routes.get(request.path)
        if route is None:
            return Response(404, ("invalid path. " + self.help_text()).encode())
        if route.mutates and request.method != "POST":
            return Response(405, f"Method {request.method} not allowed, POST required.".encode(),
                            headers=(("allow", "POST"),))
        if not route.mutates and request.method not in _READ_METHODS:
            return Response(405, f"Method {request.method} not allowed.".encode(),
                            headers=(("allow", "GET, HEAD, POST"),))
        return route.handler(request)

    def help_text(self) -> str:
        lines = ["admin commands are:\n"]
        for route in self._sorted:
            lines.append(f"  {route.path}: {route.help}\n")
            lines.extend(f"      {name}: {text}\n" for name, text in route.params)
        return "".join(lines)

    def _help(self, request: Request) -> Response:
        return Response(200, self.help_text().encode())

    def _index(self, request: Request) -> Response:
        return Response(200, self.index_html().encode(), HTML)

    def index_html(self) -> str:
        rows: list[str] = []
        for route in self._sorted:
            path, text = html.escape(route.path), html.escape(route.help)
            if route.mutates:
                cell = (f"<form action='{path}' method='post'>"
                        f"<button type='submit'>{path}</button></form>")
            else:
                cell = f"<a href='{path}'>{path}</a>"
            params = "".join(f"<br><code>{html.escape(name)}</code>: {html.escape(t)}"
                             for name, t in route.params)
            rows.append(f"<tr><td>{cell}</td><td>{text}{params}</td></tr>")
        return (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>meshproxy admin</title>"
            "<style>body{font-family:sans-serif}td{padding:2px 12px;vertical-align:top}"
            "form{margin:0}</style></head>\n<body><h1>meshproxy admin</h1>\n"
            "<p>Buttons send POST requests and change the server's state.</p>\n<table>\n"
            + "\n".join(rows)
            + "\n</table></body></html>\n"
        )
