"""`edgemeta device serve`: the board's HTTP/JSON service that enrolls, classifies and forgets (docs/service.md)."""

# api: what each endpoint does; http: the handler and server; cli: options, start and stop.
# `edgemeta.serve.http` imports `http.server` with `ssl` blocked (docs/service.md, "Memory"), which would leave a
# process that only wanted `Service` or the options without HTTPS clients: `make_server` loads it when asked for.

from __future__ import annotations

from typing import Any

from edgemeta.serve.api import ConfigError, HTTPError, Limits, Service, is_loopback, request_reserve
from edgemeta.serve.cli import add_serve_arguments, main, run, serve_from_args

__all__ = ["ConfigError", "HTTPError", "Limits", "Service", "add_serve_arguments", "is_loopback", "main",
           "make_server", "request_reserve", "run", "serve_from_args"]


def __getattr__(name: str) -> Any:
    if name == "make_server":  # http.server (and its 3 MiB) only for a process that serves
        from edgemeta.serve.http import make_server

        return make_server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
