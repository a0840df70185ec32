"""The HTTP application: ``POST /v1/titles`` (JSON), ``GET /healthz`` (status and model), ``GET /`` (a page).

Every refused request gets a JSON body ``{"error": "..."}`` whose message names the field: 400 for malformed
JSON and bad fields or values, 413 for too large a request, 503 when the server cannot title it in time (a
full queue or a timeout; ``Retry-After`` says when to try again). Bad input never gives a 500.
"""

# No `from __future__ import annotations` here: fastapi reads the handlers' annotations (``request: Request``) as
# objects, and fastapi itself is imported inside `create_app`, so that titlegen-serve --help does not load it.
import contextlib
import logging
import time
from importlib import resources

from titlegen import TitlegenError
from titlegen.serving.batching import Batcher, Busy
from titlegen.serving.schema import RequestError, RequestRules, parse_request
from titlegen.serving.served_model import DeadlinePassed, ServedModel
from titlegen.strategies import STRATEGIES

RETRY_AFTER_SECONDS = 1
logger = logging.getLogger("titlegen.serve")


def create_app(
    engine: ServedModel,
    rules: RequestRules,
    *,
    batch_size: int = 16,
    batch_wait: float = 0.005,
    max_queue: int = 256,
    timeout: float = 60.0,
) -> "FastAPI":  # noqa: F821 (imported below)
    """The application serving `engine`.

    Args:
        engine: The model that writes the titles.
        rules: What a request may hold, and the defaults for what it leaves out.
        batch_size: Most articles in one generate call.
        batch_wait: Seconds a request waits for others to share its generate call.
        max_queue: Most articles waiting; a request beyond it gets a 503 at once.
        timeout: Seconds a request may wait for its titles before it gets a 503; a generate call stops once
            none of its requests waits any more, so that no request holds the server for longer.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    def generate(articles, settings, deadline: float) -> list[str]:
        seed, decoding = settings
        return engine.generate_titles(articles, batch_size=batch_size, seed=seed, deadline=deadline, **dict(decoding))

    batcher = Batcher(generate, batch_size=batch_size, batch_wait=batch_wait, max_queue=max_queue, timeout=timeout)
    metadata = engine.metadata()
    # What a request that sets nothing is decoded with: the model's generation config under the server's settings.
    decoding = {**metadata["decoding"], **rules.defaults}
    # A request body holds at most max_articles articles of max_article_chars characters, 4 bytes each in UTF-8,
    # and its ids and settings.
    max_body_bytes = rules.max_articles * (4 * rules.max_article_chars + 1024) + 65536
    page = resources.files("titlegen.serving").joinpath("page.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    # No generated API docs: they load their scripts from a CDN, and the body is checked by `parse_request`.
    app = FastAPI(title="titlegen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(Busy)
    async def busy(request: Request, err: Busy) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return JSONResponse({"error": f"server busy: {err}; retry later"}, status_code=503, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:  # unknown paths, wrong methods
        return JSONResponse({"error": err.detail}, status_code=err.status_code, headers=err.headers)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {
            "status": "ok",
            "model": metadata,
            "decoding": decoding,
            "strategy": rules.strategy,
            "strategies": STRATEGIES,
            "limits": {
                "max_articles": rules.max_articles,
                "max_article_chars": rules.max_article_chars,
                "request_max_num_beams": rules.request_max_num_beams,
                "request_max_new_tokens": rules.request_max_new_tokens,
                "batch_size": batch_size,
                "max_queue": max_queue,
                "timeout": timeout,
            },
            "queued": batcher.queued,
            "generating": batcher.generating,
            "generate_calls": batcher.calls,
        }

    @app.post("/v1/titles")
    async def titles(request: Request) -> JSONResponse:
        start = time.perf_counter()
        body = await _read_body(request, max_body_bytes)
        checked = parse_request(body, rules)
        try:  # settings the engine cannot honour (e.g. seeded sampling with CTranslate2) are the request's fault
            engine.check_decoding(seed=checked.seed, **checked.decoding)
        except TitlegenError as err:
            raise RequestError(f"request: {err}") from None
        try:
            generated = await batcher.titles(checked.articles, checked.settings)
        except Busy:
            raise
        except DeadlinePassed:  # the generate call stopped at the timeout of its requests, this one's included
            raise Busy(f"no titles within {timeout:g} s") from None
        except Exception as err:  # a fault of the server (out of memory, a bug), not of the request
            logger.exception("generating titles for %s articles failed", len(checked.articles))
            return JSONResponse({"error": f"internal error ({type(err).__name__}); see the server's log"}, 500)
        return JSONResponse(
            {
                "titles": [{"id": i, "title": t} for i, t in zip(checked.ids, generated, strict=True)],
                "model": metadata["name"],
                "strategy": checked.strategy,
                "seconds": round(time.perf_counter() - start, 4),
            }
        )

    return app


async def _read_body(request, limit: int) -> bytes:
    """The request's body (of a starlette ``Request``), refused with a 413 as soon as it is known to exceed `limit`
    bytes."""
    too_large = RequestError(f"request body: more than {limit} bytes (max_articles x max_article_chars)", 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
