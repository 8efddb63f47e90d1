from api.sse import PING, format_sse


def test_data_frame() -> None:
    assert format_sse('{"a":1}') == b'data: {"a":1}\n\n'


def test_named_event_frame() -> None:
    assert format_sse("{}", event="message_stop") == b"event: message_stop\ndata: {}\n\n"


def test_multiline_data_gets_one_field_per_line() -> None:
    assert format_sse("a\nb") == b"data: a\ndata: b\n\n"


def test_ping_is_a_comment() -> None:
    assert PING.startswith(b":") and PING.endswith(b"\n\n")
