"""The HTTP API (FastAPI): search, OpenAI-compatible embeddings, text-to-SQL, feedback, the
model list, the A/B report and a page for people at ``/``.

Every ``/v1`` endpoint needs ``Authorization: Bearer KEY`` (``pgfleet api-key create``);
``/``, ``/healthz``, ``/metrics`` and the OpenAPI docs do not. Errors have OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: 401 for a missing, unknown or revoked
key; 413 for a body over ``PGFLEET_API_MAX_BODY_BYTES``; 422 for malformed JSON or fields,
naming the field; 404 for an unknown model version; 503 when the database is unreachable.
Handlers are plain functions: Starlette runs them in its thread pool, where they block on
the database and on their engine's batcher, never on the event loop; the key check is
answered on the loop when the key was checked in the last second.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from pgfleet.api import keys, metrics
from pgfleet.api.service import Service
from pgfleet.errors import (
    ConfigurationError,
    DatabaseConflict,
    DatabaseUnavailable,
    InferenceFailed,
    ModelLoadError,
    PgfleetError,
    QueryTimeout,
    SqlRejected,
    UnknownModelVersion,
)
from pgfleet.settings import Settings
from pgfleet.text2sql.readonly import DEFAULT_MAX_BYTES

logger = logging.getLogger(__name__)

#: requests handled at once (Starlette's thread pool; its default is 40)
THREADS = 128
MAX_KEY_CHARS = 256


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status, message, kind, param, code)


def error_body(message: str, kind: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ------------------------------------------------------------------------- bodies
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(Strict):
    query: str = Field(min_length=1, description="what to look for")
    k: int = Field(10, ge=1, le=1000, description="hits to return")
    key: str | None = Field(None, max_length=MAX_KEY_CHARS,
                            description="a user or session id: the same key gets the same "
                                        "version of an A/B split")
    version: str | None = Field(None, max_length=200,
                                description="answer with this version (id, v2, name@v2) "
                                            "instead of the split's choice")
    name: str | None = Field(None, max_length=200,
                             description="the model to route within (default: the active "
                                         "one's)")
    source: str | None = Field(None, max_length=40, pattern=r"^[a-z][a-z0-9_]*$",
                               description="search this source's rows (pgfleet source list) "
                                           "instead of docs")
    mode: Literal["vector", "hybrid"] = Field(
        "vector", description="hybrid: vector and full-text results fused by reciprocal rank "
                              "(a source only)")


class EmbeddingsRequest(BaseModel):
    """OpenAI's ``/v1/embeddings``; fields it has that mean nothing here are ignored."""

    model: str = Field(min_length=1, max_length=200,
                       description="a model name (routed by its A/B split) or a version "
                                   "(v2, name@v2, id)")
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=MAX_KEY_CHARS,
                             description="sticky A/B assignment, as the key of a search")


class SqlRequest(Strict):
    question: str = Field(min_length=1)
    run: bool = Field(False, description="run the SQL (read-only, as pgfleet_reader)")
    key: str | None = Field(None, max_length=MAX_KEY_CHARS)
    version: str | None = Field(None, max_length=200)
    beams: int = Field(4, ge=1, le=16)
    timeout_ms: int = Field(5000, ge=1, le=60_000)
    max_rows: int = Field(1000, ge=1, le=10_000)
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, le=DEFAULT_MAX_BYTES,
                           description="the most the result may hold (its rows as text)")


class FeedbackRequest(Strict):
    log_id: int = Field(ge=1, description="the log_id a search answered with")
    doc_id: int = Field(ge=1)
    relevance: float = Field(1.0, ge=0, le=1)


# ------------------------------------------------------------------------- callers
BEARER = HTTPBearer(auto_error=False)


async def get_service(request: Request) -> Service:
    return request.app.state.service


async def get_caller(svc: Annotated[Service, Depends(get_service)],
                     credentials: Annotated[HTTPAuthorizationCredentials | None,
                                            Depends(BEARER)],
                     ) -> keys.ApiKey:
    """The key the request came with; 401 without a live one. A key checked in the last
    second is answered on the event loop; only a lookup goes to a thread (a sync dependency
    would cost every request one more hand-off to the thread pool and back)."""
    if credentials is None:
        raise ApiError(401, "no API key: send Authorization: Bearer KEY "
                            "(pgfleet api-key create NAME makes one)", code="missing_key")
    found = svc.known_key(credentials.credentials)
    if found is None:
        found = await run_in_threadpool(svc.check_key, credentials.credentials)
    if found is None:
        raise ApiError(401, "the API key is not valid (unknown or revoked)",
                       code="invalid_api_key")
    return found


Svc = Annotated[Service, Depends(get_service)]
Caller = Annotated[keys.ApiKey, Depends(get_caller)]


# ------------------------------------------------------------------------- the app
def create_app(conf: Settings, *, warm: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        service = Service(conf)
        _app.state.service = service
        if warm:
            threading.Thread(target=service.warm, name="warm-up", daemon=True).start()
        try:
            yield
        finally:
            service.close()

    # the docs' pages load Swagger UI from the package, not from a CDN: they work offline
    app = FastAPIOffline(title="pgfleet", version=_version(), lifespan=lifespan,
                         description="Search, embeddings and text-to-SQL from the fleet's "
                                     "models. Send `Authorization: Bearer KEY` (pgfleet "
                                     "api-key create).")
    app.state.max_body = conf.api_max_body_bytes
    # a chunked body is stopped while it is read (the 413 then goes through the handlers);
    # one that declares its length is refused before that
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=conf.api_max_body_bytes)
    app.add_middleware(BodyBound, max_bytes=conf.api_max_body_bytes)
    app.add_middleware(metrics.Middleware)
    _handlers(app)
    _operations(app)
    _requests(app, conf)
    _reports(app)
    _page(app)
    return app


def _operations(app: FastAPI) -> None:
    @app.get("/healthz", tags=["operations"])
    def healthz(svc: Svc) -> dict[str, Any]:
        """Up, and the database answers (no key needed)."""
        from pgfleet import db

        with svc.connection() as conn:
            db.fetch_one(conn, "api_health")
        return {"ok": True, "engines": svc.loaded()}

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


def _over_a_source(body: SearchRequest) -> bool:
    """Whether a search is of a source's rows (``docs`` is the built-in source: the docs
    path), refusing what only one of the two takes."""
    if body.source is not None and body.source != "docs":
        if body.name is not None:
            raise ApiError(422, "a source is searched with its own model's versions; name a "
                                "version instead", param="name")
        return True
    if body.mode != "vector":
        raise ApiError(422, "hybrid search is over a source's chunks: give source",
                       param="mode")
    return False


def _requests(app: FastAPI, conf: Settings) -> None:
    @app.post("/v1/search", tags=["search"])
    def search(body: SearchRequest, svc: Svc, _caller: Caller) -> JSONResponse:
        """The nearest docs to a query, as `pgfleet search --json` answers."""
        _check_text(conf, body.query, "query")
        if _over_a_source(body) and body.source is not None:
            return JSONResponse(svc.search_source(body.source, body.query, body.k,
                                                  mode=body.mode, key=body.key,
                                                  version=body.version))
        answer = svc.search(body.query, body.k, key=body.key, version=body.version,
                            name=body.name)
        return JSONResponse(answer.as_json())

    @app.post("/v1/embeddings", tags=["embeddings"])
    def embeddings(body: EmbeddingsRequest, svc: Svc, _caller: Caller) -> JSONResponse:
        """OpenAI-compatible embeddings from a fleet model version."""
        texts = _texts(conf, body.input)
        result = svc.embed(body.model, texts, key=body.user)
        dims = result.vectors.shape[1]
        if body.dimensions is not None and body.dimensions != dims:
            raise ApiError(422, f"{result.version.label} makes {dims}-dimensional vectors; "
                                f"dimensions={body.dimensions} cannot be served",
                           param="dimensions")
        if body.encoding_format == "base64":
            rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
                               for v in result.vectors]
        else:
            rows = result.vectors.tolist()
        return JSONResponse({
            "object": "list", "model": result.version.label,
            "data": [{"object": "embedding", "index": i, "embedding": row}
                     for i, row in enumerate(rows)],
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens}})

    @app.post("/v1/sql", tags=["text-to-SQL"])
    def sql(body: SqlRequest, svc: Svc, _caller: Caller) -> JSONResponse:
        """SQL for a question, as `pgfleet sql --json` answers; with `run`, its result."""
        _check_text(conf, body.question, "question")
        return JSONResponse(answer_sql(conf, svc, body), status_code=200)

    @app.post("/v1/feedback", tags=["search"])
    def feedback(body: FeedbackRequest, svc: Svc, _caller: Caller) -> dict[str, Any]:
        """The user of a logged search chose one of its docs (the A/B report's MRR)."""
        from pgfleet import db

        try:
            with svc.connection() as conn:
                db.execute(conn, "record_feedback", body.model_dump())
        except DatabaseConflict as exc:
            raise ApiError(404, f"no logged search with log_id {body.log_id}",
                           param="log_id", code="unknown_log_id") from exc
        return {"recorded": True}

    @app.get("/v1/models", tags=["models"])
    def models(svc: Svc, _caller: Caller) -> dict[str, Any]:
        """The versions that can answer, and the model names a request can be routed by."""
        from pgfleet import db

        with svc.connection() as conn:
            rows = db.fetch_all(conn, "api_versions")
        data: list[dict[str, Any]] = []
        names: dict[tuple[str, str], int] = {}
        for r in rows:
            created = int(r["created_at"].timestamp())
            data.append({"id": f"{r['name']}@{r['version']}", "object": "model",
                         "created": created, "owned_by": "pgfleet", "kind": r["kind"],
                         "name": r["name"], "version": r["version"], "format": r["format"],
                         "dimensions": r["dimensions"], "active": r["active"],
                         "traffic_percent": r["traffic_percent"]})
            if r["traffic_percent"] > 0 or r["active"]:
                names.setdefault((r["kind"], r["name"]), created)
        data += [{"id": name, "object": "model", "created": created, "owned_by": "pgfleet",
                  "kind": kind, "name": name, "routed": True}
                 for (kind, name), created in names.items()]
        return {"object": "list", "data": data}


def _reports(app: FastAPI) -> None:
    @app.get("/v1/ab/{name}", tags=["models"])
    def ab_report(name: str, svc: Svc, _caller: Caller,
                  since_s: Annotated[int, Query(ge=60, le=365 * 86400)] = 86400
                  ) -> dict[str, Any]:
        """`pgfleet ab status NAME --json`: per version requests, latency, quality, verdict."""
        from pgfleet.models import abtest

        with svc.connection() as conn:
            return abtest.report(conn, name, dt.timedelta(seconds=since_s))

    @app.get("/v1/ab/{name}/latency.png", tags=["models"])
    def ab_plot(name: str, svc: Svc, _caller: Caller,
                since_s: Annotated[int, Query(ge=60, le=365 * 86400)] = 86400) -> Response:
        """The latency distribution of each version's searches, as a PNG."""
        from pgfleet.models import abtest

        with tempfile.TemporaryDirectory() as tmp, svc.connection() as conn:
            path = Path(tmp) / "latency.png"
            abtest.plot_latencies(conn, name, dt.timedelta(seconds=since_s), str(path))
            return Response(path.read_bytes(), media_type="image/png")


def _page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"), headers=PAGE_HEADERS)

    @app.get("/page.js", include_in_schema=False)
    def page_js() -> Response:
        return Response(_static("page.js"), media_type="text/javascript",
                        headers=PAGE_HEADERS)


#: the page loads nothing but its own script, and no other site may frame it
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class BodyBound:
    """A body whose Content-Length is over the bound is refused before it is read, with the
    API's error shape."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                response = JSONResponse(error_body(
                    f"the body is over the bound of {self.max_bytes} bytes "
                    "(PGFLEET_API_MAX_BODY_BYTES)", "invalid_request_error",
                    code="body_too_large"), status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _static(name: str) -> str:
    return resources.files("pgfleet.api").joinpath("static", name).read_text("utf-8")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pgfleet")
    except PackageNotFoundError:
        return "0"


def _check_text(conf: Settings, text: str, param: str) -> None:
    if not text.strip():
        raise ApiError(422, f"{param} must not be blank", param=param)
    if len(text) > conf.api_max_input_chars:
        raise ApiError(422, f"{param} is {len(text)} characters, over the bound of "
                            f"{conf.api_max_input_chars} (PGFLEET_API_MAX_INPUT_CHARS)",
                       param=param)


def _texts(conf: Settings, given: Any) -> list[str]:
    """The texts of an embeddings request: a string or a list of strings."""
    texts = [given] if isinstance(given, str) else list(given)
    if not texts:
        raise ApiError(422, "input must not be empty", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(422, "input must be a string or a list of strings: token ids are not "
                            "accepted, since they belong to another tokenizer (LangChain's "
                            "OpenAIEmbeddings: check_embedding_ctx_length=False)",
                       param="input", code="token_ids_not_supported")
    if len(texts) > conf.api_max_inputs:
        raise ApiError(422, f"input has {len(texts)} texts, over the bound of "
                            f"{conf.api_max_inputs} per request (PGFLEET_API_MAX_INPUTS)",
                       param="input")
    for i, text in enumerate(texts):
        if not text:
            raise ApiError(422, f"input[{i}] is empty", param="input")
        if len(text) > conf.api_max_input_chars:
            raise ApiError(422, f"input[{i}] is {len(text)} characters, over the bound of "
                                f"{conf.api_max_input_chars} (PGFLEET_API_MAX_INPUT_CHARS)",
                           param="input")
    return texts


def answer_sql(conf: Settings, svc: Service, body: SqlRequest) -> dict[str, Any]:
    """What ``pgfleet sql QUESTION [--run] --json`` prints."""
    from pgfleet.text2sql import run_readonly
    from pgfleet.text2sql.generate import generate_sql
    from pgfleet.text2sql.readonly import connect_reader

    with svc.connection() as conn, connect_reader(conf.reader_url) as reader:
        answer = generate_sql(conn, body.question, reader=reader, version=body.version,
                              beams=body.beams, key=body.key)
        payload = _jsonable(answer.as_dict())
        if not answer.ok or not body.run:
            return payload
        try:
            result = run_readonly(reader, answer.sql or "", timeout_ms=body.timeout_ms,
                                  row_cap=body.max_rows, max_bytes=body.max_bytes)
        except (SqlRejected, QueryTimeout) as exc:
            reasons = exc.reasons if isinstance(exc, SqlRejected) else [str(exc)]
            return {**payload, "ok": False, "reasons": reasons}
    return {**payload, "ok": True, "columns": result.columns,
            "rows": _jsonable([list(r) for r in result.rows]),
            "truncated": result.truncated, "bytes": result.bytes,
            "elapsed_ms": round(result.elapsed_ms, 1)}


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def _handlers(app: FastAPI) -> None:
    def reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        kind = "authentication_error" if exc.status == 401 else exc.kind
        return reply(exc.status, error_body(exc.message, kind, exc.param, exc.code), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (),
                                                                "msg": "invalid request"}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(where) or None
        if first.get("type") == "json_invalid":
            context = first.get("ctx") or {}
            message = f"the body is not valid JSON: {context.get('error', '')}"
            param = None
        elif param:
            message = f"{param}: {first.get('msg')}"
        else:
            message = str(first.get("msg"))
        body = error_body(message, "invalid_request_error", param, str(first.get("type")))
        body["detail"] = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"),
                           "type": e.get("type")} for e in errors]
        return reply(422, body)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        if exc.status_code == 413:
            message = (f"the body is over the bound of {app.state.max_body} bytes "
                       "(PGFLEET_API_MAX_BODY_BYTES)")
        else:
            message = str(exc.detail)
        return reply(exc.status_code, error_body(message, "invalid_request_error"),
                     getattr(exc, "headers", None))

    _library_errors(app, reply)


def _library_errors(app: FastAPI, reply: Any) -> None:
    from pgfleet.sources.catalog import UnknownSource

    @app.exception_handler(UnknownSource)
    async def unknown_source(_request: Request, exc: UnknownSource):
        return reply(404, error_body(str(exc), "invalid_request_error", "source",
                                     "source_not_found"))

    @app.exception_handler(UnknownModelVersion)
    async def unknown_model(_request: Request, exc: UnknownModelVersion):
        return reply(404, error_body(str(exc), "invalid_request_error", "model",
                                     "model_not_found"))

    @app.exception_handler(DatabaseUnavailable)
    async def database_down(_request: Request, exc: DatabaseUnavailable):
        return reply(503, error_body(str(exc), "server_error", code="database_unavailable"),
                     {"Retry-After": "1"})

    @app.exception_handler(ConfigurationError)
    async def misconfigured(_request: Request, exc: ConfigurationError):
        return reply(503, error_body(str(exc), "server_error", code="not_configured"))

    @app.exception_handler(InferenceFailed)
    async def inference_failed(_request: Request, exc: InferenceFailed):
        return reply(500, error_body(str(exc), "server_error", code="inference_failed"))

    @app.exception_handler(ModelLoadError)
    async def model_broken(_request: Request, exc: ModelLoadError):
        return reply(503, error_body(str(exc), "server_error", code="model_unavailable"))

    @app.exception_handler(PgfleetError)
    async def refused(_request: Request, exc: PgfleetError):
        return reply(422, error_body(str(exc), "invalid_request_error"))

    @app.exception_handler(ValueError)
    async def bad_value(_request: Request, exc: ValueError):
        return reply(422, error_body(str(exc), "invalid_request_error"))


def plain_logging() -> None:
    """Log lines as plain text with a timestamp: a server's log goes to a file, and rendering
    each access line with rich on the event loop took a quarter of the loop's time at 16
    clients (measured with py-spy)."""
    import logging

    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = root.level
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


AUTOGROUP = Path("/proc/self/autogroup")


def autogroup_niceness() -> int | None:
    """This session's autogroup niceness, or None where autogroups do not apply: a kernel
    without them, or a process in a cgroup of its own (a container's), for which the kernel
    shows an empty file and weighs the cgroup instead."""
    try:
        text = AUTOGROUP.read_text()
    except OSError:
        return None
    words = text.split()       # "/autogroup-1 nice 0"
    if len(words) != 3 or words[1] != "nice":
        return None
    try:
        return int(words[2])
    except ValueError:
        return None


def lower_priority(niceness: int) -> None:
    """This process and the threads it starts yield the CPU to the fleet's other processes
    when they want it (``PGFLEET_API_NICE``). Linux's autogroup scheduling weighs each
    session against the others by the session's niceness, not the process's, so a process
    leading its own session (as every child of ``pgfleet up`` does) sets that too; one
    started in someone's terminal session leaves the session alone."""
    import os

    os.nice(niceness)
    if os.getsid(0) != os.getpid() or autogroup_niceness() is None:
        return
    try:
        AUTOGROUP.write_text(str(niceness))
    except OSError as exc:   # another kernel's rules: the process's niceness stands
        logger.info("could not set this session's autogroup niceness: %s", exc)


def serve(conf: Settings, *, port: int | None = None, address: str | None = None) -> None:
    """Run the API until SIGTERM or Ctrl-C (uvicorn; its access log names no header)."""
    import os

    import uvicorn

    # torch's OpenMP threads sleep when they have no work instead of spinning: they would
    # take the cores from the workers and from this process's own request threads (torch is
    # imported later, when the first engine loads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    plain_logging()
    if conf.api_nice:
        lower_priority(conf.api_nice)
    app = create_app(conf)
    started = time.monotonic()
    logger.info("pgfleet API on http://%s:%s (docs at /docs)", address or conf.api_address,
                port if port is not None else conf.api_port)
    # uvloop's event loop and httptools' parser when installed (both are dependencies)
    uvicorn.run(app, host=address or conf.api_address,
                port=conf.api_port if port is None else port, log_level="info",
                loop="auto", http="auto",
                access_log=True, proxy_headers=False, server_header=False,
                timeout_graceful_shutdown=10, log_config=None)
    logger.info("pgfleet API stopped after %.0f s", time.monotonic() - started)
