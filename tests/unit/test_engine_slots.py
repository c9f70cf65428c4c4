"""Engine concurrency limits: the slots counted in one process, the share of a limit while
Redis is away, the backoff of a leg waiting for a slot, and the leg's states. Pure."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from bridge.cluster.connection import check_cancelled
from bridge.cluster.engine_slots import local_share
from bridge.config import AssemblyAISettings, DeepgramSettings, Settings, SttSettings
from bridge.legs.upstream import TRANSITIONS, Step, UpstreamState
from bridge.stt.reconnect import capacity_delays
from bridge.stt.slots import LocalEngineSlots, LocalSlot, stream_limits


def test_slots_are_granted_up_to_the_limit_and_a_release_frees_one() -> None:
    slots = LocalEngineSlots({"deepgram": 2})
    first, second = slots.take("deepgram"), slots.take("deepgram")
    assert first is not None and second is not None and first.lease != second.lease
    assert slots.take("deepgram") is None
    first.release()
    third = slots.take("deepgram")
    assert third is not None
    assert slots.in_use() == {"deepgram": 2}


def test_a_release_counts_once_however_often_it_is_called() -> None:
    given_back: list[LocalSlot] = []
    slots = LocalEngineSlots({"deepgram": 1}, on_release=given_back.append)
    slot = slots.take("deepgram")
    assert slot is not None
    slot.release()
    slot.release()
    assert given_back == [slot]
    held = slots.take("deepgram")
    assert held is not None
    slot.release()  # the old slot again: the new one stays held
    assert slots.in_use() == {"deepgram": 1} and slots.take("deepgram") is None


def test_an_engine_without_a_limit_never_refuses() -> None:
    slots = LocalEngineSlots({"deepgram": 0})
    taken = [slots.take("deepgram") for _ in range(500)] + [slots.take("telnyx")]
    assert None not in taken
    assert slots.usage() == {("deepgram", "instance"): 500, ("telnyx", "instance"): 1}


def test_a_slot_dropped_without_being_granted_is_not_reported_as_given_back() -> None:
    given_back: list[LocalSlot] = []
    slots = LocalEngineSlots({"deepgram": 1}, on_release=given_back.append)
    slot = slots.take("deepgram")
    assert slot is not None and slots.drop(slot)
    slot.release()
    assert given_back == [] and slots.in_use() == {"deepgram": 0}


def test_limits_come_from_the_sections_of_the_engines_in_use() -> None:
    settings = Settings(stt=SttSettings(engine="deepgram", secondary_engine="telnyx"),
                        deepgram=DeepgramSettings(max_streams=50),
                        assemblyai=AssemblyAISettings(max_streams=7))  # not in use
    assert stream_limits(settings) == {"deepgram": 50, "telnyx": 0}


@pytest.mark.parametrize(("limit", "alive", "share"), [
    (50, 1, 50), (50, 2, 25), (50, 3, 16), (2, 3, 1), (1, 10, 1), (10, 0, 10)])
def test_each_instance_takes_an_even_share_while_redis_is_away(
        limit: int, alive: int, share: int) -> None:
    assert local_share(limit, alive) == share


def test_a_waiting_leg_retries_soon_then_every_four_seconds_or_so() -> None:
    delays = capacity_delays(random.Random(7))
    first = [next(delays) for _ in range(8)]
    assert 0.5 <= first[0] <= 0.625 and 1.0 <= first[1] <= 1.25 and 2.0 <= first[2] <= 2.5
    assert all(4.0 <= d <= 5.0 for d in first[3:])


def test_a_leg_waits_for_a_slot_only_before_a_session_and_ends_if_its_audio_does() -> None:
    assert TRANSITIONS[(UpstreamState.OPENING, Step.NO_SLOT)] is UpstreamState.WAITING
    assert TRANSITIONS[(UpstreamState.WAITING, Step.SLOT_TAKEN)] is UpstreamState.OPENING
    assert TRANSITIONS[(UpstreamState.WAITING, Step.CLOSED)] is UpstreamState.DONE
    assert (UpstreamState.STREAMING, Step.NO_SLOT) not in TRANSITIONS
    assert (UpstreamState.WAITING, Step.OPENED) not in TRANSITIONS


async def test_a_cancellation_a_redis_call_swallowed_is_raised_again() -> None:
    async def swallowing_then_checking(started: asyncio.Event) -> str:
        started.set()
        # What a lost race inside the client amounts to: the cancellation is dropped.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        check_cancelled()
        return "went on"

    started = asyncio.Event()
    task = asyncio.create_task(swallowing_then_checking(started))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    check_cancelled()  # a task nobody cancelled goes on
