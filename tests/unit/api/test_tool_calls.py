"""Reading output for tool calls (api/tool_calls.py): whole, and streamed in pieces."""

import pytest

from api.tool_calls import CallSplitter, read_reply
from shared.job import GenerationJob, NamedToolChoice, Tool

CALL = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>'


def job(choice: object = "auto") -> GenerationJob:
    return GenerationJob(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        deadline=0,
        flavour="openai",
        tools=[Tool(name="get_weather"), Tool(name="other")],
        tool_choice=choice,
    )


def test_a_call_block_is_read_into_calls() -> None:
    reply = read_reply(job(), CALL)
    assert reply.text == ""
    assert [(c.name, c.arguments) for c in reply.calls] == [("get_weather", {"city": "Paris"})]
    assert len(reply.calls[0].id) == 32


def test_text_before_the_block_stays_text_and_one_object_is_one_call() -> None:
    reply = read_reply(job(), 'Let me look.\n<tool_call>{"name": "other", "arguments": {}}')
    assert reply.text == "Let me look.\n"
    assert [c.name for c in reply.calls] == ["other"]


def test_several_blocks_and_several_calls() -> None:
    two = (
        '<tool_call>[{"name": "other", "arguments": {}}, {"name": "other", "arguments": {"x": 1}}]'
    )
    reply = read_reply(job(), f"{CALL}\n{two}</tool_call>")
    assert [c.name for c in reply.calls] == ["get_weather", "other", "other"]


@pytest.mark.parametrize(
    "output",
    [
        '<tool_call>[{"name": "nope", "arguments": {}}]</tool_call>',  # not a tool of the job
        '<tool_call>[{"name": "other", "arguments": "x"}]</tool_call>',  # not an object
        '<tool_call>[{"name": "other"}]</tool_call>',
        "<tool_call>[{]</tool_call>",
        "<tool_call>[]</tool_call>",
        f"{CALL}<tool_call>broken",  # one bad block: all of it is text
    ],
)
def test_anything_unparseable_stays_text(output: str) -> None:
    reply = read_reply(job(), output)
    assert (reply.text, reply.calls) == (output, [])


def test_nothing_is_read_when_tools_are_not_offered() -> None:
    assert read_reply(job("none"), CALL).calls == []


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_streamed_pieces_give_the_same_reply(size: int) -> None:
    output = "Sure <tool but no call; " + CALL
    splitter = CallSplitter(job(NamedToolChoice(name="get_weather")))
    sent = "".join(splitter.feed(output[i : i + size]) for i in range(0, len(output), size))
    end = splitter.finish()
    assert sent + end.text == "Sure <tool but no call; "
    assert [c.arguments for c in end.calls] == [{"city": "Paris"}]


def test_a_streamed_unparseable_block_comes_out_as_text() -> None:
    splitter = CallSplitter(job())
    assert splitter.feed("a <tool_") == "a "
    assert splitter.feed("call> oops") == ""
    assert splitter.finish().text == "<tool_call> oops"
