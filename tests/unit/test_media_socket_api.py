"""The media endpoint's direct reading is used only with the private aiohttp API it was
written against; another shape of it means the queue, not a failure per connection."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from bridge.web.media_socket import direct_reading_available

check = direct_reading_available.__wrapped__  # the check itself, not its cached answer


def test_the_installed_aiohttp_is_read_from_directly() -> None:
    assert check() is True


def test_an_aiohttp_that_starts_a_response_differently_is_read_through_its_queue(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def post_start(self: web.WebSocketResponse, request: Any, protocol: str | None,
                   writer: Any, heartbeat_cb: Any) -> None:
        raise AssertionError("never called by the check")

    monkeypatch.setattr(web.WebSocketResponse, "_post_start", post_start)
    assert check() is False


def test_an_aiohttp_whose_frame_reader_takes_other_arguments_is_read_through_its_queue(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Reader:
        def __init__(self, queue: Any, max_msg_size: int, *, compress: bool) -> None:
            pass

    monkeypatch.setattr("bridge.web.media_socket._FrameReader", Reader)
    assert check() is False
