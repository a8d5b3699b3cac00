"""The HTTP plumbing around the server's routes (llmlab/serve/app.py): an OpenAPI schema precise
enough for fuzzing (the one served model, the OpenAI error body of every failure), JSON bodies
whatever their Content-Type, and one OpenAI-format error for every failure path."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from llmlab.log import get_logger
from llmlab.serve.protocol import APIError, validation_error


def precise_openapi(app: FastAPI, model_name: str) -> None:
    """The schema names the one model this server serves and the error body of every failure."""
    def openapi():
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("ChatCompletionRequest", "CompletionRequest"):
                if name in comps:
                    comps[name]["properties"]["model"]["enum"] = [model_name]
            comps["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["message", "type", "param", "code"], "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"},
                    "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
            err = {"description": "OpenAI-format error", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    resp = op.setdefault("responses", {})
                    resp.pop("422", None)  # validation errors are 400s here, as OpenAI's
                    for code in (("400", "404", "429", "503") if "requestBody" in op else ()):
                        resp[code] = err
            app.openapi_schema = schema
        return app.openapi_schema
    app.openapi = openapi


class JSONBodies:
    """Read every POST body under /v1 as JSON whatever its Content-Type: `curl -d` sends
    application/x-www-form-urlencoded, some clients send none (OpenAI's API accepts both)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/v1/"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI error JSON: ours, validation, HTTP (404/405), and unexpected ones."""
    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        err = validation_error(list(e.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        msg = {404: f"no route {request.method} {request.url.path}",
               405: f"method {request.method} not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(APIError(e.status_code, msg, None, "not_found" if e.status_code == 404 else None).body(),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        get_logger().exception(f"unexpected error on {request.method} {request.url.path}")
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}", None, None,
                                     "server_error").body(), status_code=500)
