"""Fixtures of the end-to-end tests beyond the shared ones in tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.deepgram import DeepgramEmulator


@pytest.fixture
async def deepgram() -> AsyncIterator[DeepgramEmulator]:
    """A Deepgram emulator; it closes an idle session after 10 s, as the service does."""
    async with DeepgramEmulator() as emulator:
        yield emulator
