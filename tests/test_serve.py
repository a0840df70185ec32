"""titlegen-serve on a tiny model, over real HTTP on loopback: titles, bad input, batching, timeouts, shutdown."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from titlegen import TitlegenError
from titlegen.config import parse_args
from titlegen.data import read_jsonl
from titlegen.engines.export import export_model
from titlegen.recipes.predict import predict
from titlegen.recipes.serve import build_app, main, settings
from titlegen.serving.served_model import ServedModel
from titlegen.serving.server import listen

from .conftest import ARTICLES, ROOT, read_lines, subprocess_env

RECORDS = read_lines(ARTICLES)
BODY = {"articles": [{"id": r["id"], "maintext": r["maintext"]} for r in RECORDS]}


@contextlib.contextmanager
def running(app) -> Iterator[httpx.Client]:
    """Serves `app` from a thread on a free loopback port; yields a client for it, and stops the server after."""
    import uvicorn

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def app_for(model_dir, *flags: str):
    return build_app(*parse_args(settings(), ["--model", str(model_dir), *flags]))


@pytest.fixture(scope="module")
def client(trained_dir) -> Iterator[httpx.Client]:
    """A server with the default settings and small limits, shared by the tests that do not count calls."""
    with running(app_for(trained_dir, "--max_articles", "12", "--max_article_chars", "500")) as client:
        yield client


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """The number of articles of every generate call the servers make."""
    made: list[int] = []
    generate = ServedModel.generate_titles

    def counted(self, articles, **settings):
        made.append(len(articles))
        return generate(self, articles, **settings)

    monkeypatch.setattr(ServedModel, "generate_titles", counted)
    return made


def predicted(model_dir, tmp_path, *flags: str) -> dict[str, str]:
    """titlegen-predict's titles of the fixture articles, by id."""
    argv = ["--model", str(model_dir), "--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl"), *flags]
    return {p["id"]: p["title"] for p in predict(argv)}


SETTINGS = {
    "model's own": ([], {}),
    "beam": (["--strategy", "beam", "--num_beams", "3"], {"strategy": "beam", "num_beams": 3}),
    "sampling": (
        ["--strategy", "temperature", "--temperature", "1.5", "--seed", "7"],
        {"strategy": "temperature", "temperature": 1.5, "seed": 7},
    ),
    "no_repeat": (
        ["--no_repeat_ngram_size", "2", "--max_new_tokens", "8"],
        {"no_repeat_ngram_size": 2, "max_new_tokens": 8},
    ),
}


@pytest.mark.parametrize("flags, fields", SETTINGS.values(), ids=SETTINGS.keys())
def test_titles_equal_titlegen_predicts(trained_dir, tmp_path, client, flags, fields):
    response = client.post("/v1/titles", json={**BODY, **fields})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [t["id"] for t in answer["titles"]] == [r["id"] for r in RECORDS]
    assert {t["id"]: t["title"] for t in answer["titles"]} == predicted(trained_dir, tmp_path, *flags)
    assert answer["model"] == str(trained_dir) and answer["strategy"] == fields.get("strategy")
    assert answer["seconds"] > 0


@pytest.mark.slow
def test_server_flags_set_the_defaults_of_requests_that_name_no_strategy(trained_dir, tmp_path):
    flags = ["--strategy", "top_p", "--top_p", "0.8", "--seed", "3"]
    with running(app_for(trained_dir, *flags)) as client:
        answer = client.post("/v1/titles", json=BODY).json()
        assert answer["strategy"] == "top_p"
        assert {t["id"]: t["title"] for t in answer["titles"]} == predicted(trained_dir, tmp_path, *flags)
        # A request's own strategy replaces the server's settings, as a preset does on the command line.
        answer = client.post("/v1/titles", json={**BODY, "strategy": "greedy"}).json()
        assert {t["id"]: t["title"] for t in answer["titles"]} == predicted(
            trained_dir, tmp_path, "--strategy", "greedy"
        )
        health = client.get("/healthz").json()
        assert health["decoding"]["top_p"] == 0.8 and health["decoding"]["do_sample"] is True


def test_healthz_describes_the_model(trained_dir, client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    model = health["model"]
    assert model["name"] == str(trained_dir) and model["model_type"] == "mt5"
    assert model["parameters"] > 0 and model["vocabulary"] > 0
    assert model["max_source_length"] == 64 and model["decoding"]["num_beams"] == 1  # as trained by the fixture
    assert "beam" in health["strategies"] and health["limits"]["max_articles"] == 12


def test_the_page_is_served(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert 'id="article"' in response.text and 'fetch("v1/titles"' in response.text


ARTICLE = {"id": "a", "maintext": "台北市政府今天宣布增設公共自行車站。"}
BAD_REQUESTS = {
    "not JSON": (b'{"articles": [', 400, "request body: not valid JSON (Expecting value at column 15)"),
    "not UTF-8": (b'{"articles": "\xff"}', 400, "request body: not valid UTF-8 (byte 15)"),
    "not an object": ([ARTICLE], 400, "request body: expected a JSON object, got list"),
    "no articles field": ({"strategy": "beam"}, 400, "request: field 'articles' is missing"),
    "articles not a list": ({"articles": "text"}, 400, "request: field 'articles' must be a list of articles, got str"),
    "articles null": ({"articles": None}, 400, "request: field 'articles' must be a list of articles, got NoneType"),
    "no article": ({"articles": []}, 400, "request: field 'articles' is empty"),
    "article not an object": ({"articles": ["text"]}, 400, "articles[0]: expected a JSON object, got str"),
    "missing maintext": ({"articles": [ARTICLE, {"id": "b"}]}, 400, "articles[1]: field 'maintext' is missing"),
    "missing id": ({"articles": [{"maintext": "文"}]}, 400, "articles[0]: field 'id' is missing"),
    "empty maintext": ({"articles": [{"id": "a", "maintext": " \n"}]}, 400, "articles[0]: field 'maintext' is empty"),
    "maintext not a string": (
        {"articles": [{"id": "a", "maintext": ["文"]}]},
        400,
        "articles[0]: field 'maintext' must be a string, got list",
    ),
    "id not a string": (
        {"articles": [{"id": 1.5, "maintext": "文"}]},
        400,
        "articles[0]: field 'id' must be a string, got float",
    ),
    "repeated id": ({"articles": [ARTICLE, ARTICLE]}, 400, "articles[1]: field 'id' repeats the id 'a' of articles[0]"),
    "too many articles": (
        {"articles": [{"id": str(i), "maintext": "文"} for i in range(13)]},
        413,
        "request: field 'articles' holds 13 articles, more than the limit of 12 (max_articles)",
    ),
    "article too long": (
        {"articles": [{"id": "a", "maintext": "文" * 501}]},
        413,
        "articles[0]: field 'maintext' holds 501 characters, more than the limit of 500 (max_article_chars)",
    ),
    "body too large": (
        json.dumps({"articles": [ARTICLE], "padding": " " * 3_000_000}).encode(),
        413,
        "request body: more than 101824 bytes (max_articles x max_article_chars)",
    ),
    "unknown strategy": (
        {"articles": [ARTICLE], "strategy": "nucleus"},
        400,
        "request: unknown strategy 'nucleus'; choose one of greedy, beam, beam_no_repeat, top_k, top_p, temperature",
    ),
    "unknown argument": (
        {"articles": [ARTICLE], "num_beam": 4},
        400,
        "request: unknown field 'num_beam' (did you mean 'num_beams'?)",
    ),
    "argument of the wrong type": (
        {"articles": [ARTICLE], "num_beams": "4"},
        400,
        "request: field 'num_beams' must be an integer, got str",
    ),
    "seed of the wrong type": (
        {"articles": [ARTICLE], "seed": True},
        400,
        "request: field 'seed' must be an integer, got bool",
    ),
    "contradictory arguments": (
        {"articles": [ARTICLE], "strategy": "beam", "top_p": 0.9},
        400,
        "request: `top_p`: `do_sample` is not set to `True`. However, `top_p` is set to `0.9` -- this flag is only "
        "used in sample-based generation modes. You should set `do_sample=True` or unset `top_p`.",
    ),
    "argument out of range": (
        {"articles": [ARTICLE], "num_beams": 0},
        400,
        "request: num_beams must be at least 1, got 0",
    ),
    "top_p above 1": (
        {"articles": [ARTICLE], "strategy": "top_p", "top_p": 1.5},
        400,
        "request: top_p must be at most 1, got 1.5",
    ),
    "zero temperature": (
        {"articles": [ARTICLE], "strategy": "temperature", "temperature": 0},
        400,
        "request: temperature must be greater than 0, got 0",
    ),
    "NaN temperature": (
        b'{"articles": [{"id": "a", "maintext": "\\u6587"}], "strategy": "temperature", "temperature": NaN}',
        400,
        "request: temperature must be a finite number, got nan",
    ),
    "infinite temperature": (
        b'{"articles": [{"id": "a", "maintext": "\\u6587"}], "strategy": "temperature", "temperature": 1e309}',
        400,
        "request: temperature must be a finite number, got inf",
    ),
    "NaN top_p": (
        b'{"articles": [{"id": "a", "maintext": "\\u6587"}], "strategy": "top_p", "top_p": NaN}',
        400,
        "request: top_p must be a finite number, got nan",
    ),
    "JSON nested 50,000 deep": (  # within the body limit of this server
        b'{"articles": [{"id": "a", "maintext": "\\u6587"}], "seed": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        400,
        "request body: JSON nested too deeply",
    ),
    "ten thousand beams": (
        {"articles": [ARTICLE], "num_beams": 10_000},
        400,
        "request: num_beams must be at most 64, got 10000",
    ),
    "beams beyond the server's limit": (
        {"articles": [ARTICLE], "num_beams": 9},
        400,
        "request: num_beams 9 is more than the server's limit of 8 (request_max_num_beams)",
    ),
    "a billion new tokens": (
        {"articles": [ARTICLE], "max_new_tokens": 1_000_000_000},
        400,
        "request: max_new_tokens must be at most 1024, got 1000000000",
    ),
    "titles beyond the server's limit": (
        {"articles": [ARTICLE], "max_new_tokens": 129},
        400,
        "request: max_new_tokens 129 is more than the server's limit of 128 (request_max_new_tokens)",
    ),
}


@pytest.mark.parametrize("body, status, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_input_is_refused_with_a_message_naming_the_field(client, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/v1/titles", content=content, headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (status, {"error": message})


@pytest.mark.parametrize(
    "record",
    [{"id": "a"}, {"id": "a", "maintext": ""}, {"id": ["a"], "maintext": "文"}, "text"],
    ids=["missing", "empty", "not a string", "not an object"],
)
def test_an_article_gets_the_message_titlegen_predict_gives_for_its_file_line(client, tmp_path, record):
    path = tmp_path / "articles.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(Exception) as file_error:
        read_jsonl(path)
    answer = client.post("/v1/titles", json={"articles": [record]}).json()
    assert answer["error"] == str(file_error.value).replace(f"{path}:1", "articles[0]")


def test_other_errors_are_json_too(client):
    assert client.get("/v1/nothing").json() == {"error": "Not Found"}
    response = client.get("/v1/titles")
    assert (response.status_code, response.json()) == (405, {"error": "Method Not Allowed"})


@pytest.mark.slow
def test_concurrent_requests_share_generate_calls_and_each_gets_its_own_titles(trained_dir, tmp_path, calls):
    greedy = predicted(trained_dir, tmp_path, "--strategy", "greedy")
    beam = predicted(trained_dir, tmp_path, "--strategy", "beam")
    # 12 requests of one or two articles (some in reverse order), half greedy, half beam search.
    requests = []
    for i, pair in enumerate(zip(RECORDS[0::2], RECORDS[1::2], strict=True)):
        for strategy in ("greedy", "beam"):
            articles = [{"id": r["id"], "maintext": r["maintext"]} for r in (pair if i % 2 else pair[::-1])]
            requests.append({"articles": articles[: 1 + i % 2], "strategy": strategy})

    with running(app_for(trained_dir, "--batch_wait_ms", "300", "--batch_size", "16")) as client:
        with ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(lambda body: client.post("/v1/titles", json=body), requests))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    for body, answer in zip(requests, answers, strict=True):
        expected = greedy if body["strategy"] == "greedy" else beam
        assert answer.json()["titles"] == [{"id": a["id"], "title": expected[a["id"]]} for a in body["articles"]]
    assert sum(calls) == sum(len(body["articles"]) for body in requests)
    assert 2 <= len(calls) < len(requests), calls  # one group per strategy, at least


@pytest.fixture
def slow_generate(monkeypatch) -> threading.Event:
    """Makes every generate call wait until the returned event is set (at most 10 s)."""
    release = threading.Event()
    generate = ServedModel.generate_titles

    def slow(self, articles, **settings):
        release.wait(timeout=10)
        return generate(self, articles, **settings)

    monkeypatch.setattr(ServedModel, "generate_titles", slow)
    return release


def wait_until(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_request_that_waits_too_long_gets_503(trained_dir, slow_generate):
    with running(app_for(trained_dir, "--request_timeout", "1")) as client:
        response = client.post("/v1/titles", json={"articles": [ARTICLE]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json() == {"error": "server busy: no titles within 1 s; retry later"}
        slow_generate.set()
        wait_until(lambda: client.get("/healthz").json()["generating"] == 0)
        assert client.post("/v1/titles", json={"articles": [ARTICLE]}).status_code == 200, "the server goes on"


@pytest.mark.slow
def test_a_request_beyond_the_queue_limit_gets_503_at_once(trained_dir, slow_generate):
    flags = ["--max_queue", "2", "--max_articles", "2", "--batch_wait_ms", "0"]
    with running(app_for(trained_dir, *flags)) as client, ThreadPoolExecutor(2) as pool:
        health = lambda: client.get("/healthz").json()  # noqa: E731
        two = {"articles": [ARTICLE, {**ARTICLE, "id": "b"}]}
        generating = pool.submit(client.post, "/v1/titles", json=two)
        wait_until(lambda: health()["generate_calls"] == 1)
        queued = pool.submit(client.post, "/v1/titles", json=two)
        wait_until(lambda: health()["queued"] == 2)
        response = client.post("/v1/titles", json={"articles": [ARTICLE]})
        assert response.status_code == 503
        assert response.json() == {"error": "server busy: 2 articles are waiting (max_queue 2); retry later"}
        slow_generate.set()
        assert generating.result().status_code == queued.result().status_code == 200


@pytest.mark.slow
def test_sigterm_lets_the_requests_in_flight_finish(trained_dir):
    # A 2-second batch wait keeps the request in flight while the server is told to stop.
    argv = ["--model", str(trained_dir), "--port", "0", "--batch_wait_ms", "2000"]
    server = subprocess.Popen(
        [sys.executable, "-m", "titlegen.recipes.serve", *argv],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = ""
        while "serving" not in line:
            line = server.stdout.readline()
            assert line, "the server exited before serving"
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=url, timeout=60) as client:
            wait_until(lambda: client.get("healthz").status_code == 200, seconds=60)
            in_flight = pool.submit(client.post, "v1/titles", json={"articles": [ARTICLE]})
            wait_until(lambda: client.get("healthz").json()["queued"] == 1)
            server.send_signal(signal.SIGTERM)
            response = in_flight.result()
        assert response.status_code == 200 and len(response.json()["titles"]) == 1
        output, _ = server.communicate(timeout=30)
        assert server.returncode in (0, -signal.SIGTERM), output
        assert "Finished server process" in output
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_port_in_use_and_bad_settings_are_one_line_errors(trained_dir, capsys):
    with contextlib.closing(listen("127.0.0.1", 0)) as taken:
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--model", str(trained_dir), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err
    assert main(["--model", str(trained_dir), "--port", "0", "--strategy", "nucleus"]) == 2
    assert "unknown strategy 'nucleus'" in capsys.readouterr().err
    assert main(["--model", str(trained_dir), "--port", "0", "--max_queue", "4", "--max_articles", "8"]) == 2
    assert "command line: max_queue 4 is below max_articles 8" in capsys.readouterr().err
    # 99999 is no port (a socket would listen on 99999 mod 65536): refused, not wrapped.
    assert main(["--model", str(trained_dir), "--port", "99999"]) == 2
    assert capsys.readouterr().err == "error: command line: port must be at most 65535, got 99999\n"
    # The server's own decoding must keep within the limits it sets its requests.
    assert main(["--model", str(trained_dir), "--port", "0", "--num_beams", "12"]) == 2
    assert capsys.readouterr().err == (
        "error: command line: num_beams 12 is more than the server's limit of 8 (request_max_num_beams)\n"
    )
    assert main(["--model", str(trained_dir), "--port", "0", "--temperature", "nan"]) == 2
    assert capsys.readouterr().err == "error: command line: temperature must be a finite number, got nan\n"


@pytest.mark.slow
def test_help_answers_without_heavy_imports():
    code = "import sys, titlegen.recipes.serve\nassert not {'torch', 'transformers', 'fastapi'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "titlegen.recipes.serve", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "--model_name_or_path" in result.stdout and "--batch_wait_ms" in result.stdout


def test_a_failing_generate_call_fails_its_requests_only(trained_dir, monkeypatch):
    generate = ServedModel.generate_titles

    def failing(self, articles, **settings):
        if settings.get("num_beams") == 2:
            raise RuntimeError("out of luck")
        return generate(self, articles, **settings)

    monkeypatch.setattr(ServedModel, "generate_titles", failing)
    with running(app_for(trained_dir)) as client:
        response = client.post("/v1/titles", json={"articles": [ARTICLE], "num_beams": 2})
        assert (response.status_code, response.json()) == (
            500,
            {"error": "internal error (RuntimeError); see the server's log"},
        )
        assert client.post("/v1/titles", json={"articles": [ARTICLE]}).status_code == 200


def test_a_ctranslate2_export_is_served_with_predicts_titles(trained_dir, tmp_path):
    export = tmp_path / "export"
    export_model(trained_dir, export, quantization="float32")
    expected = predicted(export, tmp_path, "--strategy", "beam", "--num_beams", "3", "--threads", "1")
    # The model decodes with the loop guard, which CTranslate2 cannot honour: the export is served without it, and a
    # server or request that asks for it is refused.
    with pytest.raises(TitlegenError, match="the ct2 backend cannot honour no_loops"):
        app_for(export, "--threads", "1", "--no_loops", "true")
    with running(app_for(export, "--threads", "1")) as client:
        asks = client.post("/v1/titles", json={**BODY, "no_loops": True})
        assert asks.status_code == 400 and "cannot honour no_loops" in asks.json()["error"], asks.text
        health = client.get("/healthz").json()
        assert health["model"]["backend"] == "ct2" and health["model"]["parameters"] is None
        response = client.post("/v1/titles", json={**BODY, "strategy": "beam", "num_beams": 3})
        assert response.status_code == 200, response.text
        assert {t["id"]: t["title"] for t in response.json()["titles"]} == expected
        # CTranslate2 cannot sample with a per-article seed: the request is refused, not answered differently.
        refused = client.post("/v1/titles", json={**BODY, "strategy": "top_k"})
        assert refused.status_code == 400 and refused.json()["error"].startswith("request: "), refused.text


def test_a_request_at_the_limits_holds_the_server_no_longer_than_its_timeout(trained_dir, monkeypatch):
    """A bounded load test: a request of the most articles, beams and tokens the server allows, with every decoding
    step made slow, gets its 503 at the timeout, and the generate call it started stops then too."""
    import torch

    forward = torch.nn.Module.__call__
    slow_steps = []

    def slow(module, *args, **kwargs):
        if type(module).__name__.endswith("ForConditionalGeneration") and kwargs.get("decoder_input_ids") is not None:
            slow_steps.append(time.monotonic())
            time.sleep(0.2)  # each decoding step; without a deadline, 32 tokens would take over 6 s
        return forward(module, *args, **kwargs)

    flags = ["--request_timeout", "1", "--max_articles", "4", "--request_max_num_beams", "4",
             "--request_max_new_tokens", "32", "--batch_wait_ms", "0"]  # fmt: skip
    at_the_limits = {"articles": [{"id": r["id"], "maintext": r["maintext"]} for r in RECORDS[:4]],
                     "strategy": "beam", "num_beams": 4, "max_new_tokens": 32}  # fmt: skip
    with running(app_for(trained_dir, *flags)) as client:
        monkeypatch.setattr(torch.nn.Module, "__call__", slow)
        start = time.monotonic()
        response = client.post("/v1/titles", json=at_the_limits)
        assert response.status_code == 503 and response.json() == {"error": "server busy: no titles within 1 s; retry "
                                                                            "later"}  # fmt: skip
        wait_until(lambda: client.get("/healthz").json()["generating"] == 0)
        held = time.monotonic() - start
        assert held < 1 + 0.2 * 3, f"the generate call held the server for {held:.1f} s"
        assert slow_steps and slow_steps[-1] - start < 1 + 0.2 * 2
        monkeypatch.setattr(torch.nn.Module, "__call__", forward)
        assert client.post("/v1/titles", json={"articles": [ARTICLE]}).status_code == 200, "the server goes on"


def test_a_preset_keeps_the_guards_the_model_was_saved_with(trained_dir, tmp_path):
    """The page's cards (greedy, beam, ...) title as the model's own decoding would, guards included, unless a
    request turns a guard off by name."""
    guarded = tmp_path / "guarded"
    shutil.copytree(trained_dir, guarded)
    config = json.loads((guarded / "generation_config.json").read_text())
    (guarded / "generation_config.json").write_text(json.dumps({**config, "article_tokens_only": True,
                                                                "no_loops": True}))  # fmt: skip
    articles = {r["id"]: r["maintext"] for r in RECORDS}
    with running(app_for(guarded)) as client:
        for strategy in ("greedy", "beam", "beam_no_repeat"):
            answer = client.post("/v1/titles", json={**BODY, "strategy": strategy}).json()
            titles = {t["id"]: t["title"] for t in answer["titles"]}
            assert all(set(title) - {" "} <= set(articles[i]) for i, title in titles.items()), (strategy, titles)
            assert titles == predicted(guarded, tmp_path, "--strategy", strategy), strategy
        off = {**BODY, "strategy": "greedy", "article_tokens_only": False, "no_loops": False}
        unguarded = {t["id"]: t["title"] for t in client.post("/v1/titles", json=off).json()["titles"]}
    assert unguarded == predicted(guarded, tmp_path, "--strategy", "greedy", "--article_tokens_only", "false",
                                  "--no_loops", "false")  # fmt: skip
