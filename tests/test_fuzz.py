"""No input gives a 500: property-based fuzzing of a real server on loopback.

One server, started once for this module in a background thread (hypothesis and schemathesis send plain
synchronous requests; the server keeps its own event loop), serves two tests:

- `test_create_task_never_fails_and_refusals_write_nothing`, one test per family of bodies: hypothesis
  builds createTask requests (JSON written as text, so lone surrogates, NaN, huge numbers and deep
  nesting can sit anywhere; valid bodies with parts swapped for junk; odd URLs; raw bytes; other
  encodings and content types) and checks that no answer is a 5xx, every refusal names its problem in
  kie's envelope, and a refusal writes nothing (row counts of every table and the account's balance).
- `test_every_documented_operation_never_answers_5xx`, one test per operation of the server's
  /openapi.json and generation mode: schemathesis cases, sent with a valid Bearer key, judged by its
  `not_a_server_error` check.

CI-sized and deterministic (`derandomize`) by default; SAFELIGHT_FUZZ_EXAMPLES raises the example count
for a long run (`make fuzz`). The server runs only the API role (no worker, delivery or retention), so
an accepted task stays queued and nothing is fetched or delivered; a stub resolver answers every DNS
lookup. Nothing leaves 127.0.0.1.

A failure shows what was sent (hypothesis `note`) and the server's logged traceback. Hypothesis' own
"Failing test case" line prints blank values here: schemathesis, once imported, replaces hypothesis'
pretty-printer for the whole process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, note, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from sqlalchemy import func, select

import safelight.net.urls as net_urls
from safelight.api.app import create_app
from safelight.catalog import MODELS
from safelight.config import Settings
from safelight.runtime import Runtime
from safelight.store.tables import accounts, metadata
from tests.helpers import free_port, start_server

CREATE = "/api/v1/jobs/createTask"
# The createTask property test runs this many examples in all (split between body families);
# schemathesis a fifteenth of it per operation and generation mode.
EXAMPLES = int(os.environ.get("SAFELIGHT_FUZZ_EXAMPLES", "500"))
OPERATION_EXAMPLES = max(10, EXAMPLES // 15)
# pytest-timeout's 120 s is sized for the CI run; a long run gets time in proportion.
TIMEOUT = max(120, EXAMPLES // 5)
CREDITS = 1_000_000_000
FUZZ_SETTINGS = settings(deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# schemathesis' strategies (negative ones above all) filter much and build large bodies: no health checks.
OPERATION_SETTINGS = settings(max_examples=OPERATION_EXAMPLES, deadline=None, derandomize=True, database=None,
                              suppress_health_check=list(HealthCheck))

# The stub resolver: these names resolve (to a public address, never connected to: no worker runs);
# every other name does not exist.
PUBLIC_IP = "93.184.216.34"
DNS = {"images.example.com": [PUBLIC_IP], "hooks.example.com": [PUBLIC_IP]}


# --- The server -------------------------------------------------------------------------------------

@dataclass
class ThreadedServer:
    """A whole Safelight (API role only) on 127.0.0.1, its event loop in a thread of its own."""

    settings: Settings
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    errors: list[str] = field(default_factory=list)  # the server's logged errors, tracebacks included
    api_key: str = ""
    account_id: int = 0

    def __post_init__(self) -> None:
        self._started: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="fuzz-server", daemon=True)

    @property
    def base_url(self) -> str:
        return self.settings.public_url

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self._server.config.app.state.runtime
        return runtime

    def start(self) -> None:
        self._thread.start()
        self._started.result(timeout=60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(setattr, self._server, "should_exit", True)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the fuzz server did not stop"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _serve(self) -> None:
        try:
            self._server, task = await start_server(self.settings, roles=())
            created = await self.runtime.store.accounts.create_key("fuzz", credits=CREDITS)
            self.api_key, self.account_id = created.key, created.account_id
        except BaseException as exc:
            self._started.set_exception(exc)
            raise
        self._started.set_result(None)
        await task

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the server's loop (the store's connections belong to it)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def snapshot(self) -> dict[str, int]:
        """Rows in every table, and the account's balance: what a refused request must leave alone."""
        columns = [select(func.count()).select_from(table).scalar_subquery().label(table.name)
                   for table in metadata.sorted_tables]
        balance = select(accounts.c.balance).where(accounts.c.id == self.account_id).scalar_subquery()
        query = select(*columns, balance.label("balance"))

        async def read() -> dict[str, int]:
            async with self.runtime.store.db.read() as conn:
                return dict((await conn.execute(query)).one()._mapping)
        return self.call(read())


class _ErrorLog(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(self.format(record))


async def _stub_resolver(host: str, port: int) -> list[str]:
    if host in DNS:
        return DNS[host]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> Iterator[ThreadedServer]:
    port = free_port()
    # outbound_allow="" (the production default): no loopback or private target is ever allowed.
    own = Settings(data_dir=tmp_path_factory.mktemp("fuzz") / "data", port=port,
                   public_url=f"http://127.0.0.1:{port}", outbound_allow="", bootstrap_demo_key=False,
                   rate_limit_per_key=0, max_queued_per_account=10_000_000,
                   # No worker runs: an accepted OpenAI images request ends its wait at once (504, see below).
                   openai_wait_seconds=0.05)
    server = ThreadedServer(own)
    handler = _ErrorLog(server.errors)
    # Safelight's loggers propagate to the root; uvicorn's do not (an error escaping the app is logged there),
    # and uvicorn sets its loggers' handlers when it starts: the handler joins them once the server runs.
    loggers = [logging.getLogger(), logging.getLogger("uvicorn.error")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(net_urls, "default_resolver", _stub_resolver)
        server.start()
        for logger in loggers:
            logger.addHandler(handler)
        try:
            yield server
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
            server.stop()


# --- JSON written as text ---------------------------------------------------------------------------
# Values are JSON text, not Python objects, so that what json.dumps cannot write (lone surrogate escapes,
# NaN, 5000-digit numbers, duplicate keys, junk tokens) can sit anywhere in a body.

def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{key}:{value}" for key, value in pairs) + "}"


def weighted(*choices: tuple[st.SearchStrategy[Any], int]) -> st.SearchStrategy[Any]:
    """one_of with weights. Repeating one strategy object does not weigh it: one_of counts it once."""
    return st.one_of(*[strategy.map(lambda value: value) for strategy, weight in choices for _ in range(weight)])


def _escape(char: str) -> str:
    # json.dumps writes a lone surrogate character as itself; encoded with surrogatepass it becomes
    # the bytes of a surrogate, which the server's decoder reads back as a lone surrogate.
    return json.dumps(char, ensure_ascii=False)[1:-1]


ESCAPES = ["\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\ud83d\\ude00", "\\ud83d", "\\ude00x", "\\uD800\\uD800",
           "\\u0000", "\\uffff", "\\ufeff", "\\u00e9", "\\n", '\\"', "\\\\", "\\/", "\\t"]
# Mostly plain text; about one string in ten has odd escapes, often a lone surrogate (as an escape, or as the
# raw character, which reaches the server as the bytes of a surrogate).
plain_strings = st.text(max_size=20).map(_text)
hostile_strings = st.lists(
    weighted((st.characters().map(_escape), 4), (st.integers(0xD800, 0xDFFF).map(chr), 1),
             (st.sampled_from(ESCAPES), 1)),
    min_size=1, max_size=12,
).map(lambda parts: '"' + "".join(parts) + '"')
json_strings = weighted((plain_strings, 12), (hostile_strings, 1))

NUMBERS = ["0", "-0", "-0.0", "1e309", "-1e309", "1e-400", "1E400", "5e-324", "1.7976931348623157e308",
           "9223372036854775807", "9223372036854775808", "-9223372036854775809", "18446744073709551616",
           "1" + "0" * 400, "9" * 4300, "9" * 4301, "-" + "9" * 5000, "0." + "0" * 1000 + "1", "1e99999999999"]
json_numbers = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(NUMBERS),
)
# Not JSON: each makes the whole body unparseable (Python's parser would take NaN and Infinity).
NOT_JSON = ["NaN", "Infinity", "-Infinity", "nan", "undefined", "tru", "nul", "'x'", "0x10", "+1", ".5", "01",
            "1.", "--1", '"\\x41"', '"\\u12"', '"tab\there"', '"line\nbreak"', "/* c */ 1", '"unterminated',
            "{", "]", ",", ""]
json_scalars = st.one_of(st.sampled_from(["null", "true", "false"]), json_numbers, json_strings)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5).map(_array),
        st.lists(st.tuples(json_strings, children), max_size=5).map(_object),
    ),
    max_leaves=20,
)
junk_values = weighted((json_values, 3), (st.sampled_from(NOT_JSON), 1))


@st.composite
def deeply_nested(draw: st.DrawFn) -> str:
    depth = draw(st.sampled_from([31, 32, 33, 100, 1000, 100_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"k":', "}]")]))
    return opener * depth + draw(json_scalars) + closer * depth


# --- createTask bodies ------------------------------------------------------------------------------

SELF = "@@SELF@@"  # replaced with the server's own base URL when the request is sent


def _enum_values() -> list[Any]:
    found: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.extend(node.get("enum", []))
            if "const" in node:
                found.append(node["const"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for spec in MODELS.values():
        walk(spec.input_schema.model_json_schema())
    return sorted(set(found), key=repr)


MODEL_IDS = list(MODELS)
FIELDS = sorted({name for spec in MODELS.values() for name in spec.input_schema.model_fields})
ENUM_VALUES = _enum_values()
IMAGE = f"https://{PUBLIC_IP}/ref.png"
# A valid input for each model: the starting point of the mutated bodies.
VALID_INPUTS: dict[str, dict[str, Any]] = {
    "z-image": {"prompt": "a red fox", "aspect_ratio": "1:1"},
    "flux-2/pro-image-to-image": {"input_urls": [IMAGE], "prompt": "make it blue", "aspect_ratio": "auto",
                                  "resolution": "1K"},
    "google/imagen4-fast": {"prompt": "a red fox"},
    "ideogram/character": {"prompt": "a red fox", "reference_image_urls": ["https://images.example.com/a.png"]},
    "google/imagen4": {"prompt": "a red fox", "seed": "7"},
    "google/imagen4-ultra": {"prompt": "a red fox"},
    "ideogram/character-edit": {"prompt": "a red fox", "image_url": IMAGE, "mask_url": IMAGE,
                                "reference_image_urls": ["https://images.example.com/a.png"]},
    "ideogram/character-remix": {"prompt": "a red fox", "image_url": IMAGE,
                                 "reference_image_urls": ["https://images.example.com/a.png"]},
    "ideogram/v3-text-to-image": {"prompt": "a red fox"},
    "ideogram/v3-edit": {"prompt": "a red fox", "image_url": IMAGE, "mask_url": IMAGE},
    "ideogram/v3-remix": {"prompt": "a red fox", "image_url": IMAGE},
    "ideogram/v3-reframe": {"image_url": IMAGE, "image_size": "square_hd"},
    "flux-2/pro-text-to-image": {"prompt": "a red fox", "aspect_ratio": "1:1", "resolution": "1K"},
    "flux-2/flex-text-to-image": {"prompt": "a red fox", "aspect_ratio": "1:1", "resolution": "1K"},
    "flux-2/flex-image-to-image": {"input_urls": [IMAGE], "prompt": "make it blue", "aspect_ratio": "auto",
                                   "resolution": "1K"},
    "google/nano-banana": {"prompt": "a red fox"},
    "google/nano-banana-edit": {"prompt": "a red fox", "image_urls": [IMAGE]},
    "nano-banana-2": {"prompt": "a red fox"},
    "nano-banana-pro": {"prompt": "a red fox"},
}
# URLs built from parts, so that odd hosts (unbalanced IPv6 brackets, userinfo, loopback spelled in other ways,
# metadata names), ports and paths meet every scheme; the server's own file URLs are spelled from SELF.
SCHEMES = ["http://", "http://", "https://", "https://", "HTTP://", "ftp://", "file://", "http:/", "javascript:", ""]
HOSTS = [
    PUBLIC_IP, PUBLIC_IP, "images.example.com", "images.example.com", "hooks.example.com", "no-such-host.example",
    "127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "0", "10.0.0.1", "169.254.169.254", "[::1]",
    "[::ffff:127.0.0.1]", "[fe80::1%25eth0]", "[::1", "[", "]", "[]", "[x]", "::1", "a:b@images.example.com", "@",
    "localhost", "metadata.google.internal", "a..b", "xn--e1afmkfd.xn--p1ai", "\u0440\u0444.example", "%00", "",
    "a" * 300, "a." * 130 + "com",
]
PORTS = ["", "", "", ":443", ":0", ":1", ":65536", ":99999", ":-1", ":x", ":"]
PATHS = ["/a.png", "/a.png", "/", "", "/" + "x" * 2100, "?q=1#f", "/%2e%2e/x", "/\u00e9", "/a b", "\\x", "\t"]
OWN_PATHS = ["uploads/1/a.png", "uploads/2/a.png?expires=1&signature=x", "results/nope/1.png", "results/a/b/c/d.png",
             "../../etc/passwd", "", "%2e%2e/x", "uploads/%00/x"]


def _urls(schemes: list[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda *parts: "".join(parts), st.sampled_from(schemes), st.sampled_from(HOSTS),
                     st.sampled_from(PORTS), weighted((st.sampled_from(PATHS), 3), (st.text(max_size=12), 1)))


built_urls = _urls(SCHEMES)
own_urls = st.one_of(st.sampled_from(OWN_PATHS), st.text(max_size=20)).map(lambda path: f"{SELF}/files/{path}")
url_strings = weighted((built_urls, 5), (own_urls, 1)).map(_text)
url_texts = weighted((url_strings, 6), (json_strings, 1))
# What the schema takes for a URL (http or https, no blank), so the odd part reaches the checks behind it.
http_urls = _urls(["http://", "https://"]).filter(lambda url: url.isprintable() and " " not in url).map(_text)

# Values for an input field: another field's valid values, strings at the length limits, URLs, numbers at
# the bounds, anything JSON. All of it is JSON: the "corrupt" mutation below is the one that breaks the syntax.
field_values = st.one_of(
    st.sampled_from(ENUM_VALUES).map(_text),
    st.sampled_from(["", "x", "ab", "abc", "x" * 1000, "x" * 1001, "x" * 5000, "x" * 5001]).map(_text),
    st.lists(url_texts, max_size=10).map(_array),
    url_texts,
    st.sampled_from([0, 1, 4, 5, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 1.0, 1.5]).map(_text),
    json_values,
)
URL_FIELDS = ["input_urls", "reference_image_urls"]
GOOD_URLS = [IMAGE, "https://images.example.com/a.png"]
MUTATIONS = ["set", "set", "set", "urls", "urls", "delete", "model", "callback", "callback", "input", "extra",
             "corrupt"]


@st.composite
def mutated_bodies(draw: st.DrawFn) -> str:
    """A valid createTask body for some model, then a few of its parts swapped for others or for junk."""
    model = draw(st.sampled_from(MODEL_IDS))
    model_input = [(_text(key), _text(value)) for key, value in VALID_INPUTS[model].items()]
    body = [(_text("model"), _text(model))]

    def put(key: str, value: str) -> None:
        nonlocal model_input
        model_input = [pair for pair in model_input if pair[0] != key] + [(key, value)]

    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(MUTATIONS))
        if what == "set":
            put(draw(st.one_of(st.sampled_from(FIELDS).map(_text), json_strings)), draw(field_values))
        elif what == "urls":
            # Good URLs and one odd one: a single bad URL must not hide behind another the schema refuses.
            urls = draw(st.lists(st.sampled_from(GOOD_URLS).map(_text), max_size=8))
            odd = draw(weighted((http_urls, 4), (url_texts, 1)))
            urls.insert(draw(st.integers(0, len(urls))), odd)
            fields = list(MODELS[model].url_fields) or URL_FIELDS
            field = draw(weighted((st.sampled_from(fields), 4), (st.sampled_from(URL_FIELDS), 1)))
            # A single-URL field (image_url, mask_url) gets the odd URL alone, most of the time.
            single = isinstance(VALID_INPUTS[model].get(field), str)
            put(_text(field), odd if single and draw(st.booleans()) else _array(urls))
        elif what == "delete" and model_input:
            model_input.pop(draw(st.integers(0, len(model_input) - 1)))
        elif what == "model":
            body[0] = (body[0][0], draw(st.one_of(st.sampled_from(MODEL_IDS).map(_text), json_values)))
        elif what == "callback":
            body.append((_text("callBackUrl"), draw(weighted((url_texts, 2), (json_values, 1)))))
        elif what == "input":
            model_input = []
            body.append((_text("input"), draw(st.one_of(json_values, deeply_nested()))))
        elif what == "extra":
            body.append((draw(json_strings), draw(json_values)))
        elif what == "corrupt" and model_input:
            index = draw(st.integers(0, len(model_input) - 1))
            model_input[index] = (model_input[index][0], draw(st.sampled_from(NOT_JSON)))
    if model_input:
        body.insert(1, (_text("input"), _object(model_input)))
    if draw(st.booleans()):
        body = draw(st.permutations(body))
    return _object(body)


@st.composite
def url_bodies(draw: st.DrawFn) -> str:
    """A valid body whose URLs (input URLs, callBackUrl or both) are odd: createTask's URL checks."""
    model = draw(st.sampled_from(MODEL_IDS))
    model_input = {key: _text(value) for key, value in VALID_INPUTS[model].items()}
    body = [(_text("model"), _text(model))]
    url_fields = MODELS[model].url_fields
    if url_fields and draw(st.booleans()):
        urls = draw(st.lists(st.sampled_from(GOOD_URLS).map(_text), max_size=4))
        odd = draw(weighted((http_urls, 4), (url_texts, 1)))
        urls.insert(draw(st.integers(0, len(urls))), odd)
        field = draw(st.sampled_from(url_fields))
        # A single-URL field (image_url, mask_url, reference_mask_urls) takes the odd URL alone.
        single = isinstance(VALID_INPUTS[model].get(field), str) or field == "reference_mask_urls"
        model_input[field] = odd if single else _array(urls)
    if not url_fields or draw(st.booleans()):
        body.append((_text("callBackUrl"), draw(weighted((http_urls, 4), (url_texts, 1)))))
    body.append((_text("input"), _object([(_text(key), value) for key, value in model_input.items()])))
    return _object(body)


@st.composite
def junk_bodies(draw: st.DrawFn) -> str:
    """An object with createTask's top-level keys, or some of them, holding anything."""
    keys = draw(st.lists(st.sampled_from(["model", "input", "callBackUrl"]), max_size=4))
    pairs = [(_text(key), draw(st.one_of(junk_values, url_texts))) for key in keys]
    return _object(pairs + draw(st.lists(st.tuples(json_strings, junk_values), max_size=2)))


# Body text goes out in one of these encodings: UTF-8 (surrogates written as their bytes), UTF-16/32
# (the JSON parser detects them), or Latin-1 (invalid UTF-8 once past ASCII).
ENCODINGS = [("utf-8", "surrogatepass")] * 6 + [("utf-8-sig", "surrogatepass"), ("utf-16", "surrogatepass"),
                                                ("utf-16-be", "surrogatepass"), ("utf-32", "surrogatepass"),
                                                ("latin-1", "replace")]
CONTENT_TYPES = [
    "application/json", "application/json", "application/json", None, "", "text/plain",
    "application/json; charset=utf-16", "application/x-www-form-urlencoded", "multipart/form-data",
    "multipart/form-data; boundary=x", "application/octet-stream", "image/png", "*/*", "application/json;;;",
]


@dataclass
class FuzzRequest:
    """One createTask request: its body (JSON text, or raw bytes sent as they are) and how it is sent."""

    body: str | bytes
    encoding: tuple[str, str]
    content_type: str | None
    chunked: bool

    def content(self, base_url: str) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return self.body.replace(SELF, base_url).encode(*self.encoding)


def _host_examples() -> list[str]:
    """Every odd host once as an input URL and once as callBackUrl: hypothesis alone may not draw each."""
    bodies = []
    for host in dict.fromkeys(HOSTS):
        url = f"http://{host}/a.png"
        flux = {**VALID_INPUTS["flux-2/pro-image-to-image"], "input_urls": [IMAGE, url]}
        bodies.append(json.dumps({"model": "flux-2/pro-image-to-image", "input": flux}))
        bodies.append(json.dumps({"model": "z-image", "callBackUrl": url, "input": VALID_INPUTS["z-image"]}))
    return bodies


# Body families: each has its share of the examples (hypothesis alone would spread them unevenly) and
# explicit examples, always run first.
BODY_FAMILIES: dict[str, tuple[st.SearchStrategy[Any], float, list[str]]] = {
    "mutated": (mutated_bodies(), 0.4,
                [json.dumps({"model": model, "input": model_input}) for model, model_input in VALID_INPUTS.items()]),
    "urls": (url_bodies(), 0.2, _host_examples()),
    "junk-object": (junk_bodies(), 0.15, []),
    "any-json": (st.one_of(json_values, deeply_nested(), st.sampled_from(NOT_JSON)), 0.15, []),
    "raw-bytes": (st.binary(max_size=200), 0.1, []),
}


def create_requests(bodies: st.SearchStrategy[str | bytes]) -> st.SearchStrategy[FuzzRequest]:
    return st.builds(
        FuzzRequest,
        body=bodies,
        encoding=st.sampled_from(ENCODINGS),
        # Header values as h11 sends them: printable ASCII, no surrounding blanks.
        content_type=st.one_of(st.sampled_from(CONTENT_TYPES),
                               st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip)),
        chunked=st.booleans(),
    )


def _server_errors(server: ThreadedServer, since: int) -> str:
    logged = server.errors[since:]
    return ("\nserver log:\n" + "\n".join(logged)) if logged else ""


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("family", list(BODY_FAMILIES))
def test_create_task_never_fails_and_refusals_write_nothing(fuzz_server, family):
    bodies, share, examples = BODY_FAMILIES[family]
    with httpx.Client(base_url=fuzz_server.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {fuzz_server.api_key}"}) as client:

        @settings(FUZZ_SETTINGS, max_examples=max(10, round(EXAMPLES * share)))
        @given(request=create_requests(bodies))
        def check(request: FuzzRequest) -> None:
            content = request.content(fuzz_server.base_url)
            headers = {} if request.content_type is None else {"Content-Type": request.content_type}
            note(f"sent: {content[:2000]!r} ({len(content)} bytes), headers {headers}, chunked {request.chunked}")
            logged = len(fuzz_server.errors)
            before = fuzz_server.snapshot()
            response = client.post(CREATE, content=iter([content]) if request.chunked else content, headers=headers)
            after = fuzz_server.snapshot()
            where = f"HTTP {response.status_code}: {response.text[:500]}{_server_errors(fuzz_server, logged)}"
            assert response.status_code < 500, where
            try:
                reply = response.json()
            except ValueError:
                pytest.fail(f"the answer is not JSON: {where}")
            assert isinstance(reply, dict) and set(reply) == {"code", "msg", "data"}, where
            assert reply["code"] != 500, where
            if reply["code"] == 200:
                assert response.status_code == 200 and isinstance(reply["data"]["taskId"], str), where
                assert after["tasks"] == before["tasks"] + 1, where
            else:
                assert isinstance(reply["msg"], str) and reply["msg"].strip(), where
                assert reply["data"] is None, where
                assert after == before, f"a refused request wrote something: {before} -> {after}; {where}"
            assert not fuzz_server.errors[logged:], where

        for body in examples:
            check = example(request=FuzzRequest(body, ENCODINGS[0], "application/json", chunked=False))(check)
        check()


# --- Every documented operation, with schemathesis -------------------------------------------------
# Driven through schemathesis' Python API (`APIOperation.as_strategy`) rather than its pytest plugin:
# `schemathesis.pytest.from_fixture` (the only way to load the schema from a server started by a fixture)
# fails on pytest 9.2 with "'Function' object has no attribute '_nodeid'" (schemathesis 4.32.5). Each
# operation is a test of its own: listed from the app's OpenAPI document when the tests are collected,
# then generated from the document the running server serves at /openapi.json.

def _documented_operations() -> list[Any]:
    """(label, mode) for every operation: positive, and negative where there is something to break
    (parameters or a request body; with neither, no input can be generated that breaks the schema)."""
    document = create_app(Settings(bootstrap_demo_key=False), roles=()).openapi()
    cases = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            label = f"{method.upper()} {path}"
            modes = [GenerationMode.POSITIVE]
            if operation.get("parameters") or operation.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            cases += [pytest.param(label, mode, id=f"{label}-{mode.value}") for mode in modes]
    return cases


def _openai_wait_ended(path: str, response: Any) -> bool:
    """The OpenAI images routes' 504 for tasks still running when SAFELIGHT_OPENAI_WAIT_SECONDS ends."""
    if response.status_code != 504 or not path.startswith("/v1/images/"):
        return False
    try:
        return bool(response.json()["error"]["code"] == "timeout")
    except (ValueError, KeyError, TypeError):
        return False


@pytest.fixture(scope="module")
def api_schema(fuzz_server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json", config=schemathesis.Config())


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize(("label", "mode"), _documented_operations())
def test_every_documented_operation_never_answers_5xx(fuzz_server, api_schema, label, mode):
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the server's /openapi.json"
    auth = {"Authorization": f"Bearer {fuzz_server.api_key}"}

    @OPERATION_SETTINGS
    @given(case=operation.as_strategy(mode))
    def check(case: schemathesis.Case) -> None:
        note(case.as_curl_command(headers=auth, base_url=fuzz_server.base_url))
        logged = len(fuzz_server.errors)
        response = case.call(base_url=fuzz_server.base_url, headers=auth, timeout=30)
        where = (f"{case.method} {case.formatted_path} HTTP {response.status_code}: "
                 f"{response.text[:500]}{_server_errors(fuzz_server, logged)}")
        if _openai_wait_ended(case.formatted_path, response):
            return  # accepted: its tasks wait for a worker, and none runs here
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except BaseExceptionGroup as failures:  # schemathesis' failures, with a curl command to reproduce
            raise AssertionError(f"{failures}\n{where}") from None
        try:
            reply = response.json()
        except ValueError:
            reply = None  # only a 5xx fails here, whatever the body
        if isinstance(reply, dict) and "code" in reply:
            assert reply["code"] != 500, where
            message = reply.get("msg")
            assert reply["code"] == 200 or (isinstance(message, str) and message.strip()), where
        assert not fuzz_server.errors[logged:], where

    check()
