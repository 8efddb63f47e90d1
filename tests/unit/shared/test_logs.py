import io
import json
import logging
import logging.config
from collections.abc import Callable, Iterator

import pytest

from shared import logs


@pytest.fixture
def configure() -> Iterator[Callable[[logs.LogFormat], io.StringIO]]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def setup(fmt: logs.LogFormat) -> io.StringIO:
        config = logs.logging_config(fmt)
        config["handlers"]["stderr"]["stream"] = stream = io.StringIO()
        logging.config.dictConfig(config)
        return stream

    yield setup
    root.handlers, root.level = saved[0], saved[1]


def test_json_lines_carry_the_bound_fields_only_in_their_scope(
    configure: Callable[[logs.LogFormat], io.StringIO],
) -> None:
    stream = configure("json")
    log = logging.getLogger("t")
    with logs.log_context(request_id="r-1"):
        logs.bind(job_id="j-1", model=None)
        log.info("inside %s", "scope", extra={"status": 200})
    log.info("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "inside scope" and inside["status"] == 200
    assert inside["request_id"] == "r-1" and inside["job_id"] == "j-1" and "model" not in inside
    assert {"time", "level", "logger", "process"} <= set(inside)
    assert "request_id" not in outside and "job_id" not in outside


def test_text_format_appends_the_fields(
    configure: Callable[[logs.LogFormat], io.StringIO],
) -> None:
    stream = configure("text")
    with logs.log_context(request_id="r-2"):
        logging.getLogger("t").warning("hello")
    assert stream.getvalue().rstrip().endswith("WARNING t: hello [request_id=r-2]")


def test_probes_stay_out_of_the_access_log(
    configure: Callable[[logs.LogFormat], io.StringIO],
) -> None:
    stream = configure("json")
    access = logging.getLogger("uvicorn.access")
    for path in ("/metrics", "/healthz", "/readyz", "/v1/chat/completions"):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", path, "1.1", 200)
    (line,) = stream.getvalue().splitlines()
    assert "/v1/chat/completions" in json.loads(line)["message"]


def test_pretty_is_one_short_line_per_request(
    configure: Callable[[logs.LogFormat], io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    stream = configure("pretty")
    with logs.log_context(request_id="r-3", model="smollm2"):
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "POST", "/v1/chat/completions", "1.1", 200
        )
        logging.getLogger(logs.JOBS_LOGGER).info("job finished", extra={"outcome": "stop"})
        logging.getLogger(logs.REQUESTS_LOGGER).info(
            "request finished",
            extra={"flavour": "openai", "status": 200, "duration_s": 0.8412, "ttft_s": 0.0612,
                   "prompt_tokens": 12, "completion_tokens": 48, "finish_reason": "length"},
        )  # fmt: skip
        logging.getLogger("api.stream").warning("job j-1: worker died")
    request_line, warning = stream.getvalue().splitlines()
    assert request_line[9:] == "200 openai smollm2 12+48 tokens 0.84s (first token 0.06s) length"
    assert warning[9:] == "WARNING api.stream: job j-1: worker died"


def test_pretty_colours_the_status_unless_no_color(
    configure: Callable[[logs.LogFormat], io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = configure("pretty")
    logging.getLogger(logs.REQUESTS_LOGGER).info(
        "request finished",
        extra={"flavour": "ollama", "status": 503, "duration_s": 0.01, "rejection": "no_worker"},
    )
    line = stream.getvalue()
    assert "\033[1m\033[31m503\033[0m ollama - 0.01s" in line and "no_worker" in line


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_auto_is_pretty_on_a_terminal_and_json_elsewhere() -> None:
    assert logs.resolve("auto", _Stream(tty=True)) == "pretty"
    assert logs.resolve("auto", _Stream(tty=False)) == "json"
    assert logs.resolve("json", _Stream(tty=True)) == "json"
    assert logs.resolve("text", _Stream(tty=False)) == "text"
