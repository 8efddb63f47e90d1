from worker.stops import StopMatcher, Utf8Decoder


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, str | None]:
    out = []
    for piece in pieces:
        text, stop = matcher.feed(piece)
        out.append(text)
        if stop:
            return "".join(out), stop
    return "".join(out) + matcher.flush(), None


def test_stop_split_over_pieces_is_found_and_dropped() -> None:
    assert feed_all(StopMatcher(["END"]), ["abc E", "N", "D tail"]) == ("abc ", "END")


def test_partial_stop_is_released_when_it_does_not_complete() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("abc EN") == ("abc ", None)
    assert matcher.feed("x") == ("ENx", None)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(["world", "lo"]), ["hello world"]) == ("hel", "lo")


def test_held_text_comes_out_on_flush() -> None:
    assert feed_all(StopMatcher(["\n\n"]), ["line\n"]) == ("line\n", None)


def test_no_stops_passes_everything() -> None:
    assert StopMatcher([]).feed("anything") == ("anything", None)


def test_utf8_character_split_over_tokens_comes_out_whole() -> None:
    decoder = Utf8Decoder()
    euro = "€".encode()
    assert decoder.feed(euro[:1]) == ""
    assert decoder.feed(euro[1:]) == "€"
    assert decoder.flush() == ""
