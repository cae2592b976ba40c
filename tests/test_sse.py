"""The SSE parser: events do not depend on where the network split the bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_pdslo.sse import DONE, SSEParser


def parse(chunks: list[bytes]) -> list[bytes]:
    parser = SSEParser()
    events = [e for c in chunks for e in parser.feed(c)]
    return events + parser.close()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def test_simple_stream_with_done() -> None:
    stream = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    assert parse([stream]) == [b'{"a": 1}', b'{"b": 2}', DONE]


def test_crlf_and_lone_cr_line_endings() -> None:
    assert parse([b"data: x\r\n\r\ndata: y\r\rdata: z\n\n"]) == [b"x", b"y", b"z"]


def test_crlf_split_between_cr_and_lf() -> None:
    assert parse([b"data: x\r", b"\n\r", b"\n"]) == [b"x"]


def test_comments_and_other_fields_ignored() -> None:
    stream = b": ping\n\nevent: message\nid: 7\nretry: 10\ndata: x\n\n:another\n\n"
    assert parse([stream]) == [b"x"]


def test_multi_line_data_joined_with_newline() -> None:
    assert parse([b"data: a\ndata:b\ndata\n\n"]) == [b"a\nb\n"]


def test_only_one_space_after_colon_dropped() -> None:
    assert parse([b"data:  two spaces\n\n"]) == [b" two spaces"]


def test_unfinished_event_dropped_at_end() -> None:
    assert parse([b"data: complete\n\ndata: cut"]) == [b"complete"]


def test_utf8_split_inside_a_character() -> None:
    payload = "données ✓ 日本".encode()
    stream = b"data: " + payload + b"\n\n"
    cut = stream.index("✓".encode()) + 1
    assert parse([stream[:cut], stream[cut:]]) == [payload]


def test_leading_bom_stripped_even_when_split() -> None:
    assert parse([b"\xef", b"\xbb\xbfdata: x\n\n"]) == [b"x"]


def test_feed_returns_events_as_soon_as_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\n") == [b"a"]


line_ending = st.sampled_from([b"\n", b"\r\n", b"\r"])
text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
               max_size=20).map(str.encode)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["data", "comment", "field"]))
            prefix = {"data": b"data:", "comment": b":", "field": b"id:"}[kind]
            parts.append(prefix + draw(text) + draw(line_ending))
        parts.append(draw(line_ending))
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(stream=streams(), cuts=st.lists(st.integers(0, 400), max_size=30))
def test_any_chunking_gives_the_same_events(stream: bytes, cuts: list[int]) -> None:
    assert parse(split_at(stream, cuts)) == parse([stream])


@settings(max_examples=100, deadline=None)
@given(stream=streams())
def test_byte_by_byte_equals_whole(stream: bytes) -> None:
    assert parse([stream[i:i + 1] for i in range(len(stream))]) == parse([stream])


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(text.filter(lambda b: not b.startswith(b" ")), max_size=10),
       sep=line_ending, cuts=st.lists(st.integers(0, 400), max_size=30))
def test_payloads_round_trip(payloads: list[bytes], sep: bytes, cuts: list[int]) -> None:
    stream = b"".join(b"data: " + p + sep + sep for p in payloads)
    assert parse(split_at(stream, cuts)) == payloads


def test_event_size_is_bounded() -> None:
    import pytest

    from pytest_pdslo.sse import MAX_EVENT_BYTES, SSEError, SSEParser

    p = SSEParser()
    with pytest.raises(SSEError, match="longer than"):
        p.feed(b"data: " + b"x" * (MAX_EVENT_BYTES + 10))
    p = SSEParser()
    with pytest.raises(SSEError, match="event longer than"):
        for _ in range(MAX_EVENT_BYTES // (1 << 20) + 2):
            p.feed(b"data: " + b"y" * (1 << 20) + b"\n")
