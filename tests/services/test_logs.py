"""Log streaming pieces: the incremental user filter and UTF-8 decoding agree with the all-at-once versions."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

from serverless_gateway.services.json_stream import decoded_chunks
from serverless_gateway.services.logs import UserLogFilter, logs_json_body, split_logs

SAMPLE = (
    "[PUBLIC] for all\r\n[PRIVATE] secret\r\nplain\rmore [PUBLIC]x\x0bvt [PRIVATE] gone\x0c"
    "é漢😀 [PUBLIC]\u2028sep [PRIVATE]\u2029\x85next\x1c\x1d\x1e[PRIVATE] no newline at the end"
)


def filtered_in_pieces(text: str, cuts: list[int]) -> str:
    log_filter = UserLogFilter()
    out = []
    start = 0
    for cut in [*cuts, len(text)]:
        out.append(log_filter.feed(text[start:cut]))
        start = cut
    out.append(log_filter.finish())
    return "".join(out)


def test_user_filter_matches_split_logs_at_every_cut() -> None:
    expected = split_logs(SAMPLE, for_provider=False)
    assert "secret" not in expected
    assert "for all" in expected
    assert "\r\n" in expected
    for cut in range(len(SAMPLE) + 1):
        assert filtered_in_pieces(SAMPLE, [cut]) == expected, cut


def test_user_filter_matches_split_logs_on_random_pieces() -> None:
    rng = random.Random(5)
    alphabet = ["a", " ", "\n", "\r", "\r\n", "[PUBLIC]", "[PRIVATE]", "[PUB", "LIC]", "\u2028", "é", "\x85"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        assert filtered_in_pieces(text, cuts) == split_logs(text, for_provider=False), (text, cuts)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(size, len(data), size):
        yield data[start : start + size]


async def test_decoding_keeps_split_utf8_sequences_whole() -> None:
    data = "é漢😀 plain".encode() * 3 + b"\xff bad \xe6\xbc" + "tail 😀".encode() + b"\xf0\x9f"
    expected = data.decode("utf-8", errors="replace")
    for size in range(1, 9):
        pieces = [piece async for piece in decoded_chunks(_chunks(data, size), data[:size])]
        assert "".join(pieces) == expected, size


async def test_json_body_is_what_fastapi_renders() -> None:
    async def pieces() -> AsyncIterator[str]:
        for piece in ('a"b\\', "\x00\x1f\x7f\n\t", "é😀\u2028", "</script>"):
            yield piece

    body = b"".join([chunk async for chunk in logs_json_body(pieces())])
    text = 'a"b\\\x00\x1f\x7f\n\té😀\u2028</script>'
    assert body == json.dumps({"logs": text}, ensure_ascii=False, separators=(",", ":")).encode()
    assert json.loads(body) == {"logs": text}


def test_a_private_line_ends_only_at_a_newline() -> None:
    text = (
        "[PRIVATE] key=abc\rshown? no\n"
        "[PRIVATE] a\u2028b\x85c\x0bd\x0ce\x1cf\u2029tail\n"
        "progress 10%\rprogress 20%\n"
        "before [PRIVATE] after\n"
        "[PUBLIC] visible\r\n"
        "[PRIVATE] last line without newline\rleak"
    )
    user = split_logs(text, for_provider=False)
    assert user == "progress 10%\rprogress 20%\nvisible\r\n"
    assert filtered_in_pieces(text, [3, 20, 21, 60]) == user


def test_an_overlong_line_is_left_out_whole() -> None:
    long_private = "x" * 300 + "[PRIVATE] secret" + "y" * 300
    text = f"short\n{long_private}\nafter\n"
    filtered = UserLogFilter(max_line=200)
    pieces = [filtered.feed(text[i : i + 50]) for i in range(0, len(text), 50)]
    out = "".join(pieces) + filtered.finish()
    assert "secret" not in out
    assert "x" * 10 not in out
    assert out.startswith("short\n[gateway] a line longer than")
    assert out.endswith("after\n")
    whole = UserLogFilter(max_line=200)
    assert whole.feed(text) + whole.finish() == out
