"""Throughput and latency of titlegen-serve under concurrent clients, against titlegen-predict on the same articles.

    python -m bench.serve_load --model outputs/tiny_offline [--articles 512] [--clients 1 32] [--repeats 3]

1. The server: ``python -m titlegen.recipes.serve --model DIR --port 0`` in its own process, listening on
   127.0.0.1 (a port the system chooses), with its defaults (batches of up to 16 articles, 5 ms batch wait)
   unless flags after ``--`` say otherwise.
2. The baseline: titlegen-predict's generation in this process: the same model and settings, the same
   ``generate_titles`` call predict makes on a file (batches of 16 after sorting by length), timed without
   loading the model.
3. The load: for each --clients C, C concurrent clients (asyncio, httpx, one keep-alive connection each) send
   the --articles first LCSTS test articles, one article per request, each taking the next unsent article,
   until all are sent: throughput (titles/s over the whole pass), latency percentiles, errors (any answer but
   200, or none within --timeout seconds). Traffic goes to 127.0.0.1 only; every pass ends after its articles or
   --max_seconds, whichever comes first.

Baseline and server passes alternate for --repeats rounds (a busy machine slows them alike); titles/s are medians,
latencies are over all rounds' requests. Without --model, a model is trained once with
trainer_args/tiny_offline.yaml (outputs/bench/serve_load/model; about half an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._common import LCSTS, ROOT, machine, markdown_table, offline_model
from titlegen.config import parse_args
from titlegen.data import read_jsonl
from titlegen.model_folder import trained_settings
from titlegen.recipes.serve import served_model
from titlegen.recipes.serve import settings as serve_settings
from titlegen.strategies import decoding_arguments

RESULTS = ROOT / "outputs" / "bench" / "serve_load"


class Server:
    """titlegen-serve in a subprocess on 127.0.0.1, stopped with SIGTERM on exit."""

    def __init__(self, model: Path, flags: list[str], threads: int):
        command = [
            sys.executable,
            "-m",
            "titlegen.recipes.serve",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]
        self.process = subprocess.Popen(
            [*command, "--access_log", "false", *flags],
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = ""
        for line in self.process.stdout:  # until the server says where it listens
            if line.startswith("serving "):
                self.url = line.split(" at ")[1].split()[0]
                break
        if not self.url.startswith("http://127.0.0.1:"):
            self.process.kill()
            raise SystemExit(f"titlegen-serve did not start: {self.process.stdout.read()}")

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def load(url: str, articles: list[str], clients: int, timeout: float, max_seconds: float) -> dict:
    """Sends every article, one per request, from `clients` concurrent clients; returns titles, latencies, errors."""
    import httpx

    titles: list[str | None] = [None] * len(articles)
    latencies: list[float] = []
    errors: list[str] = []
    upcoming = iter(range(len(articles)))
    start = time.perf_counter()
    deadline = start + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        for i in upcoming:  # shared: each client takes the next unsent article
            if time.perf_counter() > deadline:
                errors.append("not sent: --max_seconds passed")
                continue
            sent = time.perf_counter()
            try:
                response = await http.post("/v1/titles", json={"articles": [{"id": str(i), "maintext": articles[i]}]})
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            latencies.append(time.perf_counter() - sent)
            if response.status_code == 200:
                titles[i] = response.json()["titles"][0]["title"]
            else:
                errors.append(f"{response.status_code}: {response.text}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    seconds = time.perf_counter() - start
    done = sum(t is not None for t in titles)
    return {"titles": titles, "titles/s": done / seconds, "latencies": latencies, "errors": errors}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: train one with tiny_offline.yaml)")
    parser.add_argument("--articles", type=int, default=512, help="LCSTS test articles per pass (default: 512)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32], help="concurrent clients of each pass")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of baseline and server passes (median)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a client waits for an answer")
    parser.add_argument("--max_seconds", type=float, default=300, help="longest pass; later articles go unsent")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the server and the baseline (default: 1)"
    )
    parser.add_argument("--data", type=Path, default=LCSTS, help="folder with LCSTS test.zh-tw.jsonl")
    args, server_flags = parser.parse_known_args()
    server_flags = [f for f in server_flags if f != "--"]

    model = offline_model(args.model, RESULTS / "model")
    import httpx
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    articles = [r["maintext"] for r in read_jsonl(args.data / "test.zh-tw.jsonl")][: args.articles]
    # The settings the server runs with, resolved as it resolves them: predict's defaults and the flags given.
    settings, preprocessing, decoding_settings, _ = parse_args(serve_settings(), ["--model", str(model), *server_flags])
    trained = trained_settings(str(model), preprocessing)
    decoding = decoding_arguments(decoding_settings.strategy, **decoding_settings.generate_arguments())
    engine = served_model(settings, trained, decoding)
    meta = engine.metadata()
    print(machine())
    print(
        f"model: {model} ({meta['parameters']:,} parameters, vocabulary {meta['vocabulary']:,}, decoding "
        f"{decoding_settings.strategy or 'its own'}: {meta['decoding']['num_beams']} beams, article_tokens_only "
        f"{meta['decoding']['article_tokens_only']}); {len(articles)} LCSTS test articles; server flags: "
        f"{' '.join(server_flags) or 'none'}",
        flush=True,
    )

    def predict_pass() -> dict:
        start = time.perf_counter()
        titles = engine.generate_titles(articles, batch_size=settings.batch_size, seed=settings.seed, **decoding)
        return {"titles": titles, "titles/s": len(titles) / (time.perf_counter() - start)}

    with Server(model, server_flags, args.threads) as server:
        # One-time costs outside the timings: the first generate calls, connections.
        engine.generate_titles(articles[:16], batch_size=16, seed=0)
        asyncio.run(load(server.url, articles[:16], 4, args.timeout, args.max_seconds))
        runs: dict[str, list[dict]] = {"predict": [], **{f"serve {c}": [] for c in args.clients}}
        calls = {c: [] for c in args.clients}
        for repeat in range(1, args.repeats + 1):
            runs["predict"].append(predict_pass())
            print(
                f"  round {repeat}/{args.repeats} predict: {runs['predict'][-1]['titles/s']:.1f} titles/s", flush=True
            )
            for clients in args.clients:
                before = httpx.get(f"{server.url}healthz").json()["generate_calls"]
                run = asyncio.run(load(server.url, articles, clients, args.timeout, args.max_seconds))
                calls[clients].append(httpx.get(f"{server.url}healthz").json()["generate_calls"] - before)
                runs[f"serve {clients}"].append(run)
                print(
                    f"  round {repeat}/{args.repeats} serve, {clients} clients: {run['titles/s']:.1f} titles/s, "
                    f"{len(run['errors'])} errors",
                    flush=True,
                )

    baseline = statistics.median(r["titles/s"] for r in runs["predict"])
    expected = runs["predict"][-1]["titles"]
    rows = [["titlegen-predict", "-", len(articles), 0, f"{baseline:.1f}", "1.00", "-", "-", "-", "-", "-"]]
    for clients in args.clients:
        passes = runs[f"serve {clients}"]
        speed = statistics.median(r["titles/s"] for r in passes)
        latencies = [1000 * s for r in passes for s in r["latencies"]]
        same = sum(a == b for r in passes for a, b in zip(r["titles"], expected, strict=True))
        errors = sum(len(r["errors"]) for r in passes)
        per_call = len(articles) * len(passes) / max(1, sum(calls[clients]))
        rows.append(
            [
                "titlegen-serve", clients, len(articles), errors, f"{speed:.1f}", f"{speed / baseline:.2f}",
                f"{percentile(latencies, 50):.0f}", f"{percentile(latencies, 95):.0f}",
                f"{percentile(latencies, 99):.0f}", f"{per_call:.1f}", f"{same}/{len(articles) * len(passes)}",
            ]
        )  # fmt: skip
        for error in sorted({e for r in passes for e in r["errors"]})[:3]:
            print(f"  error with {clients} clients: {error[:200]}")
    header = [
        "command", "clients", "articles", "errors", "titles/s", "x predict", "p50 ms", "p95 ms", "p99 ms",
        "articles/generate call", "titles as predict's",
    ]  # fmt: skip
    print()
    print(f"median of {args.repeats} rounds; torch threads: {args.threads} in the server, {args.threads} in predict")
    print(markdown_table(header, rows))
    for row in rows[1:]:
        if row[1] == 32:  # the target is set for 32 clients sending one article per request
            ratio, errors = float(row[5]), row[3]
            met = "met" if ratio >= 0.7 and errors == 0 else "not met"
            print(
                f"\n32 clients: {ratio:.2f}x titlegen-predict's titles/s, {errors} errors (target >= 0.70x, 0: {met})"
            )


if __name__ == "__main__":
    main()
