"""Serve a trained model over HTTP: a JSON API for programs and a page for people.

    titlegen-serve --model outputs/tiny_offline                   # http://127.0.0.1:8000/
    titlegen-serve --model DIR --port 8080 --strategy beam --num_beams 8

POST /v1/titles with {"articles": [{"id": ..., "maintext": ...}, ...]} (and optionally "strategy", "seed" and
any generate flag below) answers {"titles": [{"id": ..., "title": ...}], "model", "strategy", "seconds"}; the
titles are those titlegen-predict writes with the same settings. GET /healthz describes the model and its
decoding defaults; GET / is a page to try it. Concurrent requests with the same settings are titled together in
one generate call. The flags shared with titlegen-predict set the defaults of requests that name no strategy.
The server has no authentication: it listens on 127.0.0.1 unless --host says otherwise (README: serving).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from recipes.predict import GENERATE_FLAGS, GenerationArguments


@dataclass(kw_only=True)
class ServeArguments(GenerationArguments):
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "Port to listen on (0: one the system chooses)."})
    batch_wait_ms: float = field(
        default=5.0, metadata={"help": "Milliseconds a request waits for others to share its generate call."}
    )
    max_queue: int = field(default=1024, metadata={"help": "Most articles waiting; beyond it a request gets 503."})
    request_timeout: float = field(
        default=60.0, metadata={"help": "Seconds a request may wait for its titles before it gets 503."}
    )
    max_articles: int = field(default=128, metadata={"help": "Most articles in one request."})
    max_article_chars: int = field(default=20_000, metadata={"help": "Most characters in one article."})
    access_log: bool = field(default=True, metadata={"help": "Log every request (uvicorn's access log)."})


def main(argv: Sequence[str] | None = None) -> int:
    from titlegen.cli import run

    return run(serve, argv)


def serve(argv: Sequence[str] | None = None) -> None:
    from titlegen.config import parse_args
    from titlegen.serving.server import listen

    (args,) = parse_args((ServeArguments,), argv, description=__doc__)
    with contextlib.closing(listen(args.host, args.port)) as sock:  # a port in use is found before the model loads
        app = build_app(args)

        import uvicorn

        # On SIGTERM or Ctrl-C uvicorn stops accepting connections and answers the requests in flight, each of
        # which ends within request_timeout; then the batcher stops.
        config = uvicorn.Config(app, access_log=args.access_log, timeout_graceful_shutdown=args.request_timeout + 5)
        host, port = sock.getsockname()[:2]
        url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        print(f"serving {args.model_name_or_path} at {url} (API: POST {url}v1/titles)", flush=True)
        uvicorn.Server(config).run(sockets=[sock])


def build_app(args: ServeArguments):
    """The application for `args`: settings checked first, then the model loaded as titlegen-predict loads it."""
    import typing

    from transformers import set_seed

    from titlegen import TitlegenError
    from titlegen.modeling import trained_settings
    from titlegen.serving.app import create_app
    from titlegen.serving.engine import TransformersEngine
    from titlegen.serving.schema import RequestRules
    from titlegen.strategies import decoding_arguments

    for name in ("batch_size", "max_queue", "max_articles", "max_article_chars"):
        if getattr(args, name) < 1:
            raise TitlegenError(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.max_queue < args.max_articles:
        raise TitlegenError(f"--max_queue {args.max_queue} is below --max_articles {args.max_articles}")
    if args.request_timeout <= 0 or args.batch_wait_ms < 0:
        raise TitlegenError("--request_timeout must be positive and --batch_wait_ms at least 0")
    overrides = {name: getattr(args, name) for name in GENERATE_FLAGS if getattr(args, name) is not None}
    decoding_arguments(args.strategy, **overrides)  # a bad flag is refused before the model loads
    hints = typing.get_type_hints(GenerationArguments)
    trained = trained_settings(args.model_name_or_path)
    rules = RequestRules(
        text_column=args.text_column or trained["text_column"],
        id_column=args.id_column or trained["id_column"],
        flags={name: next(t for t in typing.get_args(hints[name]) if t is not type(None)) for name in GENERATE_FLAGS},
        strategy=args.strategy,
        overrides=overrides,
        seed=args.seed,
        max_articles=args.max_articles,
        max_article_chars=args.max_article_chars,
    )

    set_seed(args.seed)
    engine = TransformersEngine.load(
        args.model_name_or_path,
        max_source_length=args.max_source_length or trained["max_source_length"],
        source_prefix=trained["source_prefix"] if args.source_prefix is None else args.source_prefix,
        bf16=args.bf16,
    )
    return create_app(
        engine,
        rules,
        batch_size=args.batch_size,
        batch_wait=args.batch_wait_ms / 1000,
        max_queue=args.max_queue,
        timeout=args.request_timeout,
    )


if __name__ == "__main__":
    raise SystemExit(main())
