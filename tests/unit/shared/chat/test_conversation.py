from pathlib import Path

import pytest

from shared.chat.conversation import (
    ChatInputError,
    ChatParams,
    Conversation,
    ConversationStore,
    Turn,
)


def test_parameters_are_typed_and_held_to_the_jobs_limits() -> None:
    params = ChatParams().with_value("temperature", "0.2").with_value("max_tokens", "64")
    params = params.with_value("ignore_eos", "true").with_value("repetition_penalty", "1.1")
    assert params.request_fields() == {
        "temperature": 0.2, "max_tokens": 64, "repetition_penalty": 1.1, "ignore_eos": True,
    }  # fmt: skip
    with pytest.raises(ChatInputError, match=r"^temperature: .*less than or equal to 2"):
        params.with_value("temperature", "5")
    with pytest.raises(ChatInputError, match=r"^max_tokens: "):
        params.with_value("max_tokens", "many")
    with pytest.raises(ChatInputError, match=r"^unknown parameter 'n'"):
        params.with_value("n", "2")
    assert "temperature" not in params.with_value("temperature", None).request_fields()
    assert params.with_value("stop", '["a", "b"]').stop == ["a", "b"]
    assert params.with_value("stop", "END").stop == ["END"]


def test_the_request_carries_system_turns_and_parameters() -> None:
    conversation = Conversation(
        model="m", system="be brief", params=ChatParams(temperature=0.0),
        turns=[Turn(role="user", content="hi"), Turn(role="assistant", content="hello", model="m")],
    )  # fmt: skip
    assert conversation.request("again") == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
        "temperature": 0.0,
    }


def test_saved_conversations_come_back_by_name(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "saved")
    assert store.names() == []
    conversation = Conversation(model="m", turns=[Turn(role="user", content="hi")])
    store.save("first.one", conversation)
    assert store.names() == ["first.one"]
    assert store.load("first.one") == conversation
    with pytest.raises(ChatInputError, match="no saved conversation 'other'"):
        store.load("other")
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(ChatInputError, match="a conversation name is"):
            store.save(bad, conversation)
    (tmp_path / "saved" / "junk.json").write_text("{}")
    with pytest.raises(ChatInputError, match="is not a conversation"):
        store.load("junk")
