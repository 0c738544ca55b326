"""An Iceberg REST catalog on loopback, for the tests of publishing through ``type: rest``.

No REST catalog server installs here (Polaris, Nessie, Lakekeeper and the Iceberg project's own
fixture are JVM or Rust services fetched outside the package index), so this is the REST protocol's
table and namespace routes over pyiceberg's own SQL catalog: requests and responses are pyiceberg's
REST models, requirements are checked and updates applied by ``SqlCatalog.commit_table`` (its
optimistic concurrency: a stale requirement is a 409, as the REST spec says). The client under test is
pyiceberg's real ``RestCatalog``, configured the way users configure it; what this server does not
implement (views, credentials, server-side scan planning, OAuth) answers 501.

``before_commit`` (a callable taking the server's catalog and the table's identifier, run once) lets a
test land a rival's real commit between a client's look at the table and its commit.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlparse

from tests.httpserve import serving

NS_SEP = "\x1f"  # the REST spec's separator of a multi-level namespace in a path


class IcebergRestServer:
    def __init__(self, sqlite_path: str, warehouse: str):
        from pyiceberg.catalog.sql import SqlCatalog

        self.catalog = SqlCatalog("rest-backend", uri=f"sqlite:///{sqlite_path}", warehouse=warehouse)
        self.before_commit: Callable[[Any, tuple[str, ...]], None] | None = None
        self.commits = 0  # commit requests answered 200
        self.conflicts = 0  # commit requests answered 409
        self._lock = threading.Lock()
        self._serving = serving(self._handler())
        self.uri = ""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _route(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    status, answer = server.handle(self.command, urlparse(self.path).path, body)
                except Exception as e:  # an error of this fixture: a 500 naming it, never a hang
                    status, answer = 500, _error(500, "ServerError", f"{type(e).__name__}: {e}")
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_HEAD = _route

        return Handler

    def __enter__(self) -> "IcebergRestServer":
        self.uri = self._serving.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._serving.__exit__(*exc)
        self.catalog.engine.dispose()

    # -- routes ---------------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        from pyiceberg.exceptions import (
            CommitFailedException,
            NamespaceAlreadyExistsError,
            NoSuchNamespaceError,
            NoSuchTableError,
            TableAlreadyExistsError,
        )

        route = re.sub(r"^/v1/", "", path).strip("/")
        parts = [unquote(p) for p in route.split("/")] if route else []
        try:
            if parts == ["config"] and method == "GET":
                return 200, {"defaults": {}, "overrides": {}}
            if parts == ["namespaces"]:
                if method == "GET":
                    return 200, {"namespaces": [list(ns) for ns in self.catalog.list_namespaces()]}
                if method == "POST":
                    request = json.loads(body)
                    self.catalog.create_namespace(tuple(request["namespace"]), request.get("properties") or {})
                    return 200, {"namespace": request["namespace"], "properties": request.get("properties") or {}}
            if len(parts) == 2 and parts[0] == "namespaces":
                ns = tuple(parts[1].split(NS_SEP))
                if method in ("GET", "HEAD"):
                    properties = self.catalog.load_namespace_properties(ns)
                    return (200, {"namespace": list(ns), "properties": properties}) if method == "GET" else (204, None)
            if len(parts) == 3 and parts[0] == "namespaces" and parts[2] == "tables":
                ns = tuple(parts[1].split(NS_SEP))
                if method == "GET":
                    names = self.catalog.list_tables(ns)
                    return 200, {"identifiers": [{"namespace": list(n[:-1]), "name": n[-1]} for n in names]}
                if method == "POST":
                    return 200, self._create(ns, body)
            if len(parts) == 4 and parts[0] == "namespaces" and parts[2] == "tables":
                identifier = (*parts[1].split(NS_SEP), parts[3])
                if method == "GET":
                    return 200, _load_result(self.catalog.load_table(identifier))
                if method == "HEAD":
                    self.catalog.load_table(identifier)
                    return 204, None
                if method == "DELETE":
                    self.catalog.drop_table(identifier)
                    return 204, None
                if method == "POST":
                    return 200, self._commit(identifier, body)
        except (NoSuchTableError, NoSuchNamespaceError) as e:
            return 404, _error(404, type(e).__name__.replace("Error", "Exception"), str(e))
        except (TableAlreadyExistsError, NamespaceAlreadyExistsError) as e:
            return 409, _error(409, "AlreadyExistsException", str(e))
        except CommitFailedException as e:
            with self._lock:
                self.conflicts += 1
            return 409, _error(409, "CommitFailedException", str(e))
        return 501, _error(501, "NotImplementedException", f"{method} {path} is not served by this test catalog")

    def _create(self, ns: tuple[str, ...], body: bytes) -> dict:
        from pyiceberg.catalog.rest import CreateTableRequest
        from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC
        from pyiceberg.table.sorting import UNSORTED_SORT_ORDER

        # the client sends these only when set; the model wants them present
        fields = {"location": None, "partition-spec": None, "write-order": None, **json.loads(body)}
        request = CreateTableRequest.model_validate(fields)
        table = self.catalog.create_table(
            (*ns, request.name),
            schema=request.table_schema,
            location=request.location,
            partition_spec=request.partition_spec or UNPARTITIONED_PARTITION_SPEC,
            sort_order=request.write_order or UNSORTED_SORT_ORDER,
            properties=request.properties,
        )
        return _load_result(table)

    def _commit(self, identifier: tuple[str, ...], body: bytes) -> dict:
        from pyiceberg.table import CommitTableRequest

        request = CommitTableRequest.model_validate_json(body)
        hook, self.before_commit = self.before_commit, None
        if hook is not None:
            hook(self.catalog, identifier)
        table = self.catalog.load_table(identifier)
        response = self.catalog.commit_table(table, request.requirements, request.updates)
        with self._lock:
            self.commits += 1
        return json.loads(response.model_dump_json(by_alias=True))


def _load_result(table: Any) -> dict:
    return {
        "metadata-location": table.metadata_location,
        "metadata": json.loads(table.metadata.model_dump_json(by_alias=True)),
        "config": {},
    }


def _error(code: int, kind: str, message: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": code}}
