"""Prometheus labels with a bounded number of values.

BentoML's traffic metrics label every request with its path as sent, so each new path, even
one refused with 401 or 404, adds series to every worker's ``/metrics`` for good: 20,000
random paths made one scrape 86 MB. BentoML has no setting for it, so ``bound_endpoint_labels``
subclasses its middleware: a request is labelled with the path template of the route that
matches it (``/classifier/predict``, a mount's prefix), and any other with ``UNKNOWN``. The
request itself reaches the app with its path unchanged.
"""

from __future__ import annotations

import copy

UNKNOWN = "/{unknown}"  # the label of every path no route of the app matches


def route_label(scope) -> str:
    """The path template of the first route of ``scope["app"]`` (the Starlette app) that
    matches the request's path (any method); ``UNKNOWN`` when none does."""
    from starlette.routing import Match

    for route in getattr(scope.get("app"), "routes", []):
        if route.matches(scope)[0] != Match.NONE:  # PARTIAL: the path, another method
            return getattr(route, "path", None) or UNKNOWN
    return UNKNOWN


def bound_endpoint_labels() -> None:
    """Make BentoML's traffic-metrics middleware label requests with ``route_label``; once per
    process, before the service's app is built (it imports the class when it builds)."""
    from bentoml._internal.server.http import instruments

    base = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "bounded_labels", False):
        return

    class BoundedLabels(base):
        bounded_labels = True

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http" or scope["path"] == "/metrics":
                return await super().__call__(scope, receive, send)
            label = route_label(scope)
            if label == scope["path"]:
                return await super().__call__(scope, receive, send)
            # the parent labels with scope["path"]: it gets the label, the app the real path
            if not self._is_setup:
                self._setup()
            view, inner, path, raw = copy.copy(self), self.app, scope["path"], scope.get("raw_path")

            async def real_path(s, r, sn) -> None:
                await inner({**s, "path": path, "raw_path": raw}, r, sn)

            view.app = real_path
            await base.__call__(view, {**scope, "path": label}, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = BoundedLabels
