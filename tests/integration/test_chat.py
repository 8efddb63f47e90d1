"""`tokenq chat` in a terminal, driven as a person would: messages streamed back, a model
switch to a second real worker, save, quit, start again, load, history; Ctrl-C mid-reply
cancels the reply's job and the chat goes on; the queue position while a message waits."""

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import DEFAULT_MODEL
from tests.integration.procs import ApiProcess, Process, WorkerProcess
from tests.integration.terminal import Terminal

pytestmark = pytest.mark.integration

SECOND_MODEL = "smollm2-second"  # the same GGUF under another name: a real switch
STATS = r"(\d+) tokens · ([\d.]+) tokens/s · first token after ([\d.]+) s"


@pytest.fixture
def chat(api: ApiProcess, tmp_path: Path) -> Iterator[Callable[[], Terminal]]:
    """Start `tokenq chat` against the session's API (saved conversations in tmp_path)."""
    started: list[Terminal] = []

    def start() -> Terminal:
        env = {"TOKENQ_CHAT_DIR": str(tmp_path / "conversations")}
        terminal = Terminal(["chat", "--url", api.url], env, tmp_path / "chat.log")
        started.append(terminal)
        terminal.expect(rf"tokenq chat with {DEFAULT_MODEL} at {re.escape(api.url)}")
        return terminal

    try:
        yield start
    finally:
        for terminal in started:
            terminal.close()


def jobs_done(worker: WorkerProcess, model: str) -> float:
    text = httpx.get(f"{worker.metrics_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tokenq_worker_jobs"
        for sample in family.samples
        if sample.name == "tokenq_worker_jobs_total" and sample.labels["model"] == model
    )


def test_a_conversation_is_streamed_switched_saved_and_loaded(
    chat: Callable[[], Terminal], spawn: Callable[..., Process], tmp_path: Path
) -> None:
    second = spawn("worker", SECOND_MODEL, "--slots", "1", "--n-ctx", "1024")
    assert isinstance(second, WorkerProcess)
    terminal = chat()
    terminal.type("/set temperature 0")
    terminal.expect("temperature = 0.0")
    terminal.type("/set max_tokens 24")
    terminal.expect("max_tokens = 24")
    terminal.type("Say hello.")
    terminal.expect(rf"{DEFAULT_MODEL}> \S")
    tokens, rate, _ = terminal.expect(STATS).groups()
    assert 2 <= int(tokens) <= 24 and float(rate) > 0
    terminal.type("What is the capital of France?")
    terminal.expect(STATS)

    terminal.type("/model no-such-model")
    line = terminal.expect(r"error: no model 'no-such-model' is served at [^\n]*\n")
    assert SECOND_MODEL in line.group(0) and "Traceback" not in terminal.text
    terminal.type("/models")
    terminal.expect(rf"\* {DEFAULT_MODEL}")
    terminal.type(f"/model {SECOND_MODEL}")
    terminal.expect(f"model: {SECOND_MODEL}")
    before = jobs_done(second, SECOND_MODEL)
    terminal.type("And of Italy?")
    terminal.expect(rf"{SECOND_MODEL}> \S")
    terminal.expect(STATS)
    assert jobs_done(second, SECOND_MODEL) == before + 1  # the second worker answered

    terminal.type("/save trip")
    terminal.expect("saved 6 turns to")
    terminal.type("/quit")
    terminal.expect("bye")
    assert terminal.wait() == 0
    saved = json.loads((tmp_path / "conversations" / "trip.json").read_text())
    assert [t["role"] for t in saved["turns"]] == ["user", "assistant"] * 3
    assert saved["model"] == SECOND_MODEL and saved["params"]["max_tokens"] == 24

    again = chat()
    again.type("/load")
    again.expect("saved: trip")
    again.type("/load trip")
    again.expect(f"loaded 'trip': 6 turns, model {SECOND_MODEL}")
    again.type("/history")
    again.expect("you> Say hello.")
    again.expect(rf"{DEFAULT_MODEL}> {re.escape(saved['turns'][1]['content'][:20])}")
    again.expect("you> What is the capital of France?")
    again.expect("you> And of Italy?")
    again.expect(rf"{SECOND_MODEL}> ")
    again.end_of_input()  # Ctrl-D leaves
    again.expect("bye")
    assert again.wait() == 0


def test_ctrl_c_stops_the_reply_and_cancels_its_job(
    chat: Callable[[], Terminal], api: ApiProcess
) -> None:
    terminal = chat()
    terminal.type("/set max_tokens 3000")
    terminal.expect("max_tokens = 3000")
    terminal.type("/set ignore_eos true")
    terminal.expect("ignore_eos = True")
    terminal.type("Tell me a very long story about a lighthouse.")
    terminal.expect(rf"{DEFAULT_MODEL}> \S+ \S+ \S+")  # a few words in: the reply is running
    terminal.interrupt()
    job_id, status = terminal.expect(r"stopped: job ([0-9a-f]{32}) (\w+)").groups()
    assert status == "cancelled"
    record = httpx.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json()
    assert record["status"] == "cancelled", record

    # The chat goes on: the next message is answered, the stopped reply is in the history.
    terminal.type("/set max_tokens 8")
    terminal.expect("max_tokens = 8")
    terminal.type("/unset ignore_eos")
    terminal.expect("ignore_eos: server default")
    terminal.type("Hi")
    terminal.expect(STATS)
    terminal.type("/history")
    terminal.expect("you> Tell me a very long story about a lighthouse.")
    terminal.expect("you> Hi")
    assert "Traceback" not in terminal.text
    terminal.end_of_input()
    assert terminal.wait() == 0


def test_a_waiting_message_shows_its_queue_position(
    chat: Callable[[], Terminal], api: ApiProcess
) -> None:
    """The session's worker has one slot: a long request holds it, the chat's message waits."""
    holder: dict[str, str] = {}
    running = threading.Event()

    def hold() -> None:
        body = {
            "model": DEFAULT_MODEL,
            "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": 3000,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream("POST", f"{api.url}/v1/chat/completions", json=body, timeout=300) as r:
            holder["job"] = r.headers["x-job-id"]
            for line in r.iter_lines():
                if line.startswith("data:"):
                    running.set()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        assert running.wait(120), "the long request never started"
        terminal = chat()
        terminal.type("/set max_tokens 8")
        terminal.expect("max_tokens = 8")
        terminal.type("Hello?")
        terminal.expect(r"queued: position 1")
        httpx.delete(f"{api.url}/v1/jobs/{holder['job']}", timeout=10)  # frees the worker
        terminal.expect(STATS)
        terminal.end_of_input()
        assert terminal.wait() == 0
    finally:
        if "job" in holder:
            httpx.delete(f"{api.url}/v1/jobs/{holder['job']}", timeout=10)
        thread.join(60)
