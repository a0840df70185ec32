"""The body of ``POST /v1/titles``, checked field by field before any work is queued.

Articles are checked by `titlegen.data.check_record`, the check of titlegen-predict's input files, so a
request gets the same message as a file line would, with ``articles[i]`` in place of ``file:line``. Decoding
settings go through `titlegen.strategies.decoding_arguments`, as titlegen-predict's flags do.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from titlegen import TitlegenError
from titlegen.data import check_record, json_error
from titlegen.strategies import GUARDS_OFF, decoding_arguments

TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


class RequestError(TitlegenError):
    """A request the server refuses; the message names the field, `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestRules:
    """What a request may hold, and what it gets for what it leaves out.

    Args:
        text_column: The article's field in each article object (titlegen-predict's ``text_column``).
        id_column: Its id's field.
        flags: The generate arguments a request may set, with their types.
        strategy: The server's decoding preset, for requests that name none.
        overrides: The server's generate arguments, on top of `strategy`, for requests that name no strategy.
        seed: The sampling seed of requests that give none.
        max_articles: Most articles in one request.
        max_article_chars: Most characters in one article.
        request_max_num_beams: Widest beam a request may decode with.
        request_max_new_tokens: Longest title a request may ask for, in tokens.
    """

    text_column: str = "maintext"
    id_column: str = "id"
    flags: Mapping[str, type] = field(default_factory=dict)
    strategy: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 42
    max_articles: int = 64
    max_article_chars: int = 20_000
    request_max_num_beams: int = 8
    request_max_new_tokens: int = 128

    @classmethod
    def for_settings(cls, decoding: type, **rules) -> RequestRules:
        """Rules whose request flags are the generate arguments of a settings dataclass, with their types.

        Args:
            decoding: `titlegen.arguments.DecodingArguments`: each field but ``strategy`` is a request flag.
            **rules: The other fields of `RequestRules`.
        """
        hints = typing.get_type_hints(decoding)
        flags = {
            f.name: next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
            for f in dataclasses.fields(decoding)
            if f.name != "strategy"
        }
        return cls(flags=flags, **rules)

    @property
    def defaults(self) -> dict[str, Any]:
        """The generate arguments of a request that sets none, on top of the model's generation config."""
        return decoding_arguments(self.strategy, **self.overrides)


@dataclass(frozen=True)
class TitleRequest:
    """A checked request: the articles, and the settings every one of them is titled with."""

    ids: list[str]
    articles: list[str]
    strategy: str | None
    seed: int
    decoding: dict[str, Any]

    @property
    def settings(self) -> tuple:
        """A hashable key of the settings: requests with equal keys can share a generate call."""
        return self.seed, tuple(sorted(self.decoding.items()))


def parse_request(body: bytes, rules: RequestRules) -> TitleRequest:
    """Reads and checks a request body.

    A request that names a ``strategy`` gets that preset with its own generate arguments on top; one that
    names none gets the server's decoding settings (its ``--strategy`` and flags, or the model's generation
    config), with the request's arguments on top.

    Raises:
        RequestError: naming the first problem: 400 for malformed JSON and bad fields or values, 413 for too
            many articles or too long an article.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"request body: not valid UTF-8 (byte {err.start + 1})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(f"request body: {json_error(err)}") from None
    except RecursionError:  # Python's decoder recurses once per level of nesting
        raise RequestError("request body: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise RequestError(f"request body: expected a JSON object, got {type(value).__name__}")

    known = {"articles": list, "strategy": str, "seed": int, **rules.flags}
    for name in value:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise RequestError(f"request: unknown field '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    if "articles" not in value:
        raise RequestError("request: field 'articles' is missing")
    for name, kind in known.items():
        if name == "articles" or value.get(name) is not None:  # null: the default
            _check_type(name, value[name], kind)
    articles = value["articles"]
    if not articles:
        raise RequestError("request: field 'articles' is empty")
    if len(articles) > rules.max_articles:
        raise RequestError(
            f"request: field 'articles' holds {len(articles)} articles, more than the limit of {rules.max_articles} "
            "(max_articles)",
            status=413,
        )
    ids: dict[str, str] = {}
    fields = (rules.id_column, rules.text_column)
    for i, record in enumerate(articles):
        try:
            check_record(record, f"articles[{i}]", f"articles[{i}]", fields, rules.id_column, (), ids)
        except TitlegenError as err:
            raise RequestError(str(err)) from None
        if len(record[rules.text_column]) > rules.max_article_chars:
            raise RequestError(
                f"articles[{i}]: field '{rules.text_column}' holds {len(record[rules.text_column])} characters, "
                f"more than the limit of {rules.max_article_chars} (max_article_chars)",
                status=413,
            )

    given = {name: value.get(name) for name in rules.flags}
    strategy = value.get("strategy")
    try:
        if strategy is not None:
            # A request's preset replaces the server's search settings, but not the guards its flags set (a server
            # started with --no_loops false keeps titling without the loop guard), as a preset keeps the model's.
            guards = {name: value for name, value in rules.overrides.items() if name in GUARDS_OFF}
            decoding = decoding_arguments(strategy, source="request", **{**guards, **_not_none(given)})
        else:
            strategy = rules.strategy
            decoding = decoding_arguments(strategy, source="request", **{**rules.overrides, **_not_none(given)})
    except TitlegenError as err:
        raise RequestError(str(err)) from None
    check_limits(decoding, rules)
    return TitleRequest(
        ids=[r[rules.id_column] for r in articles],
        articles=[r[rules.text_column] for r in articles],
        strategy=strategy,
        seed=rules.seed if value.get("seed") is None else value["seed"],
        decoding=decoding,
    )


def check_limits(decoding: Mapping[str, Any], rules: RequestRules) -> None:
    """Refuses a request whose beams or title length pass the server's limits: one such request would hold the
    only generation worker, and the memory of the machine, for every other request.

    Raises:
        RequestError: 400, naming the field and the limit's setting.
    """
    for name, limit, setting in (
        ("num_beams", rules.request_max_num_beams, "request_max_num_beams"),
        ("max_new_tokens", rules.request_max_new_tokens, "request_max_new_tokens"),
    ):
        value = decoding.get(name)
        if value is not None and value > limit:
            raise RequestError(f"request: {name} {value} is more than the server's limit of {limit} ({setting})")


def _check_type(name: str, value: Any, kind: type) -> None:
    ok = isinstance(value, (int, float) if kind is float else kind)
    if not ok or (isinstance(value, bool) and kind is not bool):
        expected = "a list of articles" if kind is list else TYPE_NAMES[kind]
        raise RequestError(f"request: field '{name}' must be {expected}, got {type(value).__name__}")


def _not_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
