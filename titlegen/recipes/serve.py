"""Serve a trained model over HTTP: a JSON API for programs and a page for people.

    titlegen-serve --model outputs/tiny_offline                   # http://127.0.0.1:8000/
    titlegen-serve --model DIR --port 8080 --strategy beam --num_beams 8

POST /v1/titles with {"articles": [{"id": ..., "maintext": ...}, ...]} (and optionally "strategy", "seed" and
any generate flag below) answers {"titles": [{"id": ..., "title": ...}], "model", "strategy", "seconds"}; the
titles are those titlegen-predict writes with the same settings. GET /healthz describes the model and its
decoding defaults; GET / is a page to try it. Concurrent requests with the same settings are titled together in
one generate call. The flags shared with titlegen-predict set the defaults of requests that name no strategy.
A folder written by titlegen-export is served by CTranslate2 (--backend auto tells by the folder).
The server has no authentication: it listens on 127.0.0.1 unless --host says otherwise (README: serving).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from titlegen import TitlegenError
from titlegen.arguments import MAX_NEW_TOKENS, MAX_NUM_BEAMS, DataArguments, DecodingArguments
from titlegen.backends import resolve_backend
from titlegen.config import parse_args
from titlegen.engines import start_engine
from titlegen.lifecycle import run_command
from titlegen.model_folder import trained_settings
from titlegen.recipes import predict
from titlegen.serving.app import create_app
from titlegen.serving.schema import RequestRules, check_limits
from titlegen.serving.served_model import ServedModel
from titlegen.serving.server import listen


@dataclass
class ServeArguments:
    """titlegen-serve's own settings: where it listens, and how it batches and bounds requests."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(
        default=8000, metadata={"help": "Port to listen on (0: one the system chooses).", "min": 0, "max": 65535}
    )
    batch_wait_ms: float = field(
        default=5.0,
        metadata={"help": "Milliseconds a request waits for others to share its generate call.", "min": 0},
    )
    max_queue: int = field(
        default=1024, metadata={"help": "Most articles waiting; beyond it a request gets 503.", "min": 1}
    )
    request_timeout: float = field(
        default=60.0,
        metadata={"help": "Seconds a request may wait for its titles before it gets 503.", "min_exclusive": 0},
    )
    max_articles: int = field(default=128, metadata={"help": "Most articles in one request.", "min": 1})
    max_article_chars: int = field(default=20_000, metadata={"help": "Most characters in one article.", "min": 1})
    request_max_num_beams: int = field(
        default=8,
        metadata={"help": "Widest beam a request may ask for; beyond it a request gets 400.", "min": 1,
                  "max": MAX_NUM_BEAMS},
    )  # fmt: skip
    request_max_new_tokens: int = field(
        default=128,
        metadata={"help": "Longest title a request may ask for, in tokens; beyond it a request gets 400.", "min": 1,
                  "max": MAX_NEW_TOKENS},
    )  # fmt: skip
    access_log: bool = field(default=True, metadata={"help": "Log every request (uvicorn's access log)."})


def settings() -> tuple[type, ...]:
    """The settings of titlegen-serve, in the order `serve` unpacks them: titlegen-predict's, less its files."""

    generation, _files, preprocessing, decoding = predict.settings()
    return generation, preprocessing, decoding, ServeArguments


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(serve, argv)


def serve(argv: Sequence[str] | None = None) -> None:
    parsed = parse_args(settings(), argv, description=__doc__)
    server_args = parsed[-1]
    with contextlib.closing(listen(server_args.host, server_args.port)) as sock:  # a port in use: before the model
        app = build_app(*parsed)

        import uvicorn

        # On SIGTERM or Ctrl-C uvicorn stops accepting connections and answers the requests in flight, each of
        # which ends within request_timeout; then the batcher stops.
        config = uvicorn.Config(
            app, access_log=server_args.access_log, timeout_graceful_shutdown=server_args.request_timeout + 5
        )
        host, port = sock.getsockname()[:2]
        url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        print(f"serving {parsed[0].model_name_or_path} at {url} (API: POST {url}v1/titles)", flush=True)
        uvicorn.Server(config).run(sockets=[sock])


def build_app(args, preprocessing, decoding, server_args: ServeArguments):
    """The application: settings checked first, then the model loaded as titlegen-predict loads it."""

    if server_args.max_queue < server_args.max_articles:
        raise TitlegenError(
            f"command line: max_queue {server_args.max_queue} is below max_articles {server_args.max_articles}"
        )
    resolve_backend(args.model_name_or_path, args.backend)
    overrides = {name: value for name, value in decoding.generate_arguments().items() if value is not None}
    trained = trained_settings(args.model_name_or_path, preprocessing)
    rules = RequestRules.for_settings(
        DecodingArguments,
        text_column=trained.text_column,
        id_column=trained.id_column,
        strategy=decoding.strategy,
        overrides=overrides,
        seed=args.seed,
        max_articles=server_args.max_articles,
        max_article_chars=server_args.max_article_chars,
        request_max_num_beams=server_args.request_max_num_beams,
        request_max_new_tokens=server_args.request_max_new_tokens,
    )
    defaults = rules.defaults  # a bad flag is refused here, before the model loads
    try:
        check_limits(defaults, rules)
    except TitlegenError as err:
        raise TitlegenError(f"command line: {str(err).removeprefix('request: ')}") from None
    return create_app(
        served_model(args, trained, defaults),
        rules,
        batch_size=args.batch_size,
        batch_wait=server_args.batch_wait_ms / 1000,
        max_queue=server_args.max_queue,
        timeout=server_args.request_timeout,
    )


def served_model(args, trained: DataArguments, defaults: dict):
    """The model a server titles with, started as titlegen-predict starts it (`titlegen.engines.start_engine`).

    Args:
        args: `titlegen.arguments.GenerationArguments`.
        trained: The model's preprocessing settings (`titlegen.model_folder.trained_settings`).
        defaults: The generate arguments every request starts from: refused here if the engine cannot honour them.
    """

    engine = start_engine(args)
    engine.check_decoding(seed=args.seed, **defaults)
    return ServedModel(
        args.model_name_or_path,
        engine,
        max_source_length=trained.max_source_length,
        source_prefix=trained.source_prefix,
    )


if __name__ == "__main__":
    raise SystemExit(main())
