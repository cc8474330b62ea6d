"""A list page's `next`/`previous` links: the request's own URL with only `limit` and `offset` changed."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from serverless_gateway.api.jobs import _page


def _request(query: bytes) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/api/v1/jobs/",
            "query_string": query,
            "headers": [(b"host", b"gateway.example:8000")],
            "scheme": "https",
            "server": ("gateway.example", 8000),
            "root_path": "",
        }
    )


@pytest.mark.parametrize(
    "query",
    [
        b"",
        b"limit=10",
        b"status=QUEUED&limit=5&offset=20&empty=",
        b"offset=3&limit=10&function=a%20b&function=c",
        b"created_after=2024-01-01T00:00:00%2B00:00&limit=10",
        b"limit=10&limit=20&offset=x",
    ],
)
@pytest.mark.parametrize(
    ("count", "limit", "offset"), [(100, 10, 0), (100, 10, 20), (15, 10, 10), (5, 10, 0), (3, 10, 50)]
)
def test_the_links_are_what_starlette_would_build(query: bytes, count: int, limit: int, offset: int) -> None:
    request = _request(query)
    page = _page(request, count, [], limit, offset)
    url = request.url
    ahead = offset + limit
    expected_next = str(url.include_query_params(limit=limit, offset=ahead)) if ahead < count else None
    back = max(0, min(offset, count) - limit)
    expected_previous = str(url.include_query_params(limit=limit, offset=back)) if offset > 0 else None
    assert (page.next, page.previous) == (expected_next, expected_previous)


def test_a_middle_page_links_both_ways_and_keeps_the_filters() -> None:
    page = _page(_request(b"status=RUNNING&limit=10&offset=10"), 35, [], 10, 10)
    assert page.next == "https://gateway.example:8000/api/v1/jobs/?status=RUNNING&limit=10&offset=20"
    assert page.previous == "https://gateway.example:8000/api/v1/jobs/?status=RUNNING&limit=10&offset=0"
