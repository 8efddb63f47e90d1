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
