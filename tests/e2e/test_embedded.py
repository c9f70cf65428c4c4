"""``callbridge serve`` with no key: the embedded recognizer as a supervised child process."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from bridge.wer import words
from tests.conftest import BridgeFactory, BridgeProcess
from tests.support.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).parents[2] / "bridge" / "samples" / "support_call"
NO_KEY = {"TELNYX_API_KEY": "", "CALLBRIDGE_STT_URL": "", "CALLBRIDGE_LOCAL_STT_WORKERS": "2"}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


async def embedded(bridge: BridgeProcess) -> int:
    line = await bridge.wait_for_log(
        "no TELNYX_API_KEY: transcribing with the embedded recognizer (PocketSphinx, offline); "
        "its accuracy is for development, not production")
    return int(line["pid"])


async def gone(pids: list[int], within_s: float = 15) -> bool:
    """Whether every process in ``pids`` has exited within ``within_s``."""
    try:
        async with asyncio.timeout(within_s):
            while any(alive(p) for p in pids):  # noqa: ASYNC110 - no event says another process's child exited
                await asyncio.sleep(0.1)
    except TimeoutError:
        return False
    return True


async def test_gone_says_false_while_a_process_lives() -> None:
    assert await gone([os.getpid()], within_s=0.3) is False
    assert await gone([]) is True


async def test_serve_without_a_key_transcribes_with_the_embedded_recognizer(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(**NO_KEY)
    await embedded(bridge)
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: (SAMPLE / "caller.ulaw").read_bytes(),
                     Track.OUTBOUND: (SAMPLE / "agent.ulaw").read_bytes()},
                    call_id="CA-embedded")
    result = await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=8)
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("CA-embedded"), within_s=60)
    legs = {leg["speaker"]: leg for leg in receiver.of_call("CA-embedded")[-1].data["legs"]}
    assert legs["agent"]["transcripts"] == 4 and legs["caller"]["transcripts"] == 3
    assert set(words(legs["agent"]["text"])) >= {"how", "account", "removed"}
    assert set(words(legs["caller"]["text"])) >= {"hi", "about"}
    finals = [e.data for e in receiver.of_call("CA-embedded") if e.type == "transcript.final"]
    agent_starts = [f["start_ms"] for f in finals if f["speaker"] == "agent"]
    # the recognizer's own segment times place the agent's turns (script: 0.3 s, ~8 s, ...)
    assert agent_starts[0] < 500 and agent_starts == sorted(agent_starts)


async def test_sigterm_stops_the_child_and_its_workers(bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(**NO_KEY)
    child = await embedded(bridge)
    workers = children(child)
    assert alive(child) and len(workers) >= 2
    bridge.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await bridge.process.wait() == 0
    assert await gone([child, *workers])


async def test_a_killed_bridge_leaves_no_orphan(bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(**NO_KEY)
    child = await embedded(bridge)
    workers = children(child)
    os.kill(bridge.process.pid, signal.SIGKILL)
    await bridge.process.wait()
    assert await gone([child, *workers])


async def test_a_crashed_child_is_restarted(bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(**NO_KEY)
    child = await embedded(bridge)
    os.kill(child, signal.SIGKILL)
    exited = await bridge.wait_for_log("embedded recognizer exited; restarting it")
    assert exited["exit_code"] == -signal.SIGKILL  # it saw our kill, not some other end
    await bridge.wait_for_log("embedded recognizer listening", within_s=60, occurrence=2)
    [successor] = children(bridge.process.pid)
    assert successor != child and alive(successor)


async def test_without_pocketsphinx_or_a_key_start_up_says_what_to_do(
        bridge_factory: BridgeFactory, tmp_path: Path) -> None:
    # Hide the package: a directory named like it, without the module, first on the path.
    shadow = tmp_path / "pocketsphinx"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    with pytest.raises(RuntimeError, match=r"pip install 'callbridge\[local\]'"):
        await bridge_factory(**NO_KEY, PYTHONPATH=str(tmp_path))
