"""Tools and tool turns in the prompt: SmolLM2's template (no tool section) gets the generic
tool prompt; a template with a tool section gets them itself."""

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from shared.job import ChatMessage, GenerationJob, Tool, ToolCall
from shared.settings import default_gguf_path
from shared.tokenizer import PromptTokenizer
from shared.tool_prompt import generic_messages, has_tool_section, template_messages, template_tools

WEATHER = Tool(
    name="get_weather",
    description="The weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
CALL = ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"})
TURNS = [
    ChatMessage(role="user", content="Paris?"),
    ChatMessage(role="assistant", content="", tool_calls=[CALL]),
    ChatMessage(role="tool", content="sunny", tool_call_id="call_1", name="get_weather"),
    ChatMessage(role="tool", content="22C", tool_call_id="call_2", name="get_weather"),
]


@pytest.fixture(scope="module")
def tokenizer() -> PromptTokenizer:
    return PromptTokenizer.load(default_gguf_path())


def test_the_generic_format_lists_tools_and_renders_tool_turns() -> None:
    plain = generic_messages(TURNS, [WEATHER])
    assert [m.role for m in plain] == ["system", "user", "assistant", "user"]
    assert '"name": "get_weather"' in plain[0].content and "<tool_call>" in plain[0].content
    assert plain[2].content == (
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>'
    )
    assert plain[3].content == (
        '<tool_response name="get_weather">sunny</tool_response>\n'
        '<tool_response name="get_weather">22C</tool_response>'
    )
    own_system = generic_messages([ChatMessage(role="system", content="Be brief."), *TURNS], [])
    assert own_system[0].content == "Be brief."  # no tools: no tool prompt


def test_the_job_prompt_has_the_tools_unless_choice_is_none(tokenizer: PromptTokenizer) -> None:
    job = GenerationJob(model="m", messages=TURNS, tools=[WEATHER], deadline=0, flavour="openai")
    text = tokenizer.render_job(job).text.decode()
    assert text.startswith("<|im_start|>system\nYou can call tools.")
    assert text.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert len(tokenizer.job_tokens(job)) == len(tokenizer.tokenize(tokenizer.render_job(job)))
    hidden = job.model_copy(update={"tool_choice": "none"})
    assert "You can call tools" not in tokenizer.render_job(hidden).text.decode()
    # the history's calls are still rendered, in the generic format
    assert "<tool_call>" in tokenizer.render_job(hidden).text.decode()


def test_a_template_with_a_tool_section_renders_them_itself() -> None:
    template = (
        "{% for t in tools %}[tool {{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
        "{% for c in m.tool_calls or [] %}(call {{ c.function.name }} "
        "{{ c.function.arguments | tojson }}){% endfor %}{% endfor %}"
    )
    assert has_tool_section(template)
    formatter = Jinja2ChatFormatter(template, "", "")
    rendered = formatter(messages=template_messages(TURNS), tools=template_tools([WEATHER]))  # type: ignore[arg-type]
    assert rendered.prompt == (
        '[tool get_weather]<user>Paris?<assistant>(call get_weather {"city": "Paris"})'
        "<tool>sunny<tool>22C"
    )
