"""``serve --workers``: who each worker is, when it is refused, and how it restarts."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator

import pytest

from bridge.cli import main
from bridge.config import Settings, load_settings
from bridge.errors import ConfigError
from bridge.web.workers import (
    RESTART_FIRST_S,
    RESTART_MAX_S,
    STABLE_AFTER_S,
    Worker,
    bind_worker_sockets,
    plan_workers,
    restart_delay,
    reuse_port_spreads,
    worker_command,
    worker_environment,
)

CLUSTER = {"CALLBRIDGE_REDIS_URL": "redis://127.0.0.1:6379/0",
           "CALLBRIDGE_TELNYX_URL": "ws://127.0.0.1:9100/v2/speech-to-text/transcription",
           "CALLBRIDGE_OUTBOX_PATH": "/var/lib/callbridge/outbox.db"}


def settings(**environ: str) -> Settings:
    return load_settings(environ=environ)


def test_each_worker_gets_its_number_on_the_instance_id_and_the_outbox_file() -> None:
    workers = plan_workers(settings(**CLUSTER, CALLBRIDGE_CLUSTER_INSTANCE_ID="pod-0"), 3)
    assert workers == (Worker(1, "pod-0-1", "/var/lib/callbridge/outbox.db.1"),
                       Worker(2, "pod-0-2", "/var/lib/callbridge/outbox.db.2"),
                       Worker(3, "pod-0-3", "/var/lib/callbridge/outbox.db.3"))


def test_without_an_instance_id_workers_are_named_by_host_and_the_parents_pid() -> None:
    workers = plan_workers(settings(**CLUSTER), 2)
    assert [w.instance_id for w in workers] == [f"{settings().cluster.instance()}-{k}"
                                               for k in (1, 2)]
    assert all(f"-{os.getpid()}-" in w.instance_id for w in workers)


def test_more_than_one_worker_needs_cluster_mode_and_says_which_setting() -> None:
    with pytest.raises(ConfigError) as refused:
        plan_workers(settings(CALLBRIDGE_TELNYX_URL=CLUSTER["CALLBRIDGE_TELNYX_URL"]), 2,
                     "--workers")
    assert refused.value.setting == "--workers"
    assert "cluster mode, which is off" in str(refused.value)
    assert "CALLBRIDGE_REDIS_URL (cluster.redis_url)" in str(refused.value)


def test_sentinels_alone_are_cluster_mode_enough() -> None:
    environ = {k: v for k, v in CLUSTER.items() if k != "CALLBRIDGE_REDIS_URL"}
    workers = plan_workers(settings(**environ, CALLBRIDGE_CLUSTER_SENTINELS="10.0.0.1:26379"), 2)
    assert len(workers) == 2


def test_workers_refuse_to_start_one_embedded_recognizer_each() -> None:
    environ = {k: v for k, v in CLUSTER.items() if k != "CALLBRIDGE_TELNYX_URL"}
    with pytest.raises(ConfigError, match="would start 2 embedded recognizers") as refused:
        plan_workers(settings(**environ), 2)
    assert "callbridge stt-local" in str(refused.value)
    # With a speech-to-text key there is no embedded recognizer to start.
    assert len(plan_workers(settings(**environ, TELNYX_API_KEY="KEY"), 2)) == 2


@pytest.mark.parametrize("count", [0, -1, 65])
def test_a_count_out_of_range_is_refused(count: int) -> None:
    with pytest.raises(ConfigError, match="must be 1-64"):
        plan_workers(settings(**CLUSTER), count)


def test_an_instance_id_with_no_room_for_the_number_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLBRIDGE_CLUSTER_INSTANCE_ID", "i" * 62)  # named as it was given
    with pytest.raises(ConfigError) as refused:
        plan_workers(settings(**CLUSTER, CALLBRIDGE_CLUSTER_INSTANCE_ID="i" * 62), 2)
    assert refused.value.setting == "CALLBRIDGE_CLUSTER_INSTANCE_ID"
    assert len(plan_workers(settings(**CLUSTER, CALLBRIDGE_CLUSTER_INSTANCE_ID="i" * 61),
                            9)) == 9


def test_server_workers_is_a_setting_with_bounds() -> None:
    assert settings().server.workers == 1
    assert settings(CALLBRIDGE_SERVER_WORKERS="4").server.workers == 4
    with pytest.raises(ConfigError, match="must be 1-64") as refused:
        settings(CALLBRIDGE_SERVER_WORKERS="0")
    assert refused.value.setting == "CALLBRIDGE_SERVER_WORKERS"


def test_restarts_back_off_while_a_worker_keeps_dying_and_start_afresh_after_it_ran() -> None:
    delays: list[float] = []
    delay = None
    for _ in range(8):
        delay = restart_delay(delay, ran_s=2.0)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert delays[0] == RESTART_FIRST_S and delays[-1] == RESTART_MAX_S
    assert restart_delay(RESTART_MAX_S, ran_s=STABLE_AFTER_S) == RESTART_FIRST_S


def test_a_worker_is_started_on_its_socket_with_its_identity() -> None:
    worker = Worker(2, "pod-0-2", "/data/outbox.db.2")
    command = worker_command(worker, 7, "10.0.0.5", "/etc/callbridge.toml")
    assert command[:3] == [sys.executable, "-m", "bridge"]
    assert command[3:] == ["serve", "--worker", "2", "--listen-fd", "7", "--host", "10.0.0.5",
                           "--config", "/etc/callbridge.toml"]
    env = worker_environment(worker, {"PATH": "/bin", "CALLBRIDGE_SERVER_WORKERS": "2",
                                      "CALLBRIDGE_CLUSTER_INSTANCE_ID": "pod-0"})
    assert env == {"PATH": "/bin", "CALLBRIDGE_SERVER_WORKERS": "1",
                   "CALLBRIDGE_CLUSTER_INSTANCE_ID": "pod-0-2",
                   "CALLBRIDGE_OUTBOX_PATH": "/data/outbox.db.2"}


@pytest.fixture
def sockets_to_close() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.mark.skipif(not reuse_port_spreads(), reason="SO_REUSEPORT spreads connections on Linux")
def test_port_0_is_chosen_once_and_every_worker_binds_it(
        sockets_to_close: list[socket.socket]) -> None:
    sockets = bind_worker_sockets("127.0.0.1", 0, 3)
    sockets_to_close += sockets
    ports = {sock.getsockname()[1] for sock in sockets}
    assert len(sockets) == 3 and len(ports) == 1 and ports != {0}
    assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for sock in sockets)


def test_where_so_reuseport_does_not_spread_connections_the_workers_share_one_socket(
        monkeypatch: pytest.MonkeyPatch, sockets_to_close: list[socket.socket]) -> None:
    import bridge.web.workers

    monkeypatch.setattr(bridge.web.workers, "reuse_port_spreads", lambda: False)
    sockets = bind_worker_sockets("127.0.0.1", 0, 3)
    sockets_to_close += sockets
    [shared] = sockets
    assert shared.getsockname()[1] != 0


def test_a_port_in_use_is_refused_even_by_a_socket_that_would_share_it(
        sockets_to_close: list[socket.socket]) -> None:
    holder = socket.socket()
    sockets_to_close.append(holder)
    if hasattr(socket, "SO_REUSEPORT"):  # another server of this user, sharing by option
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    with pytest.raises(ConfigError, match="already in use") as refused:
        bind_worker_sockets("127.0.0.1", holder.getsockname()[1], 2, "--port")
    assert refused.value.setting == "--port"


def test_the_command_line_refuses_workers_without_redis_naming_the_flag(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in [n for n in os.environ if n.startswith("CALLBRIDGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CALLBRIDGE_SERVER_WORKERS", "3")
    assert main(["serve", "--workers", "2", "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("callbridge: invalid setting --workers: 2 workers need cluster mode")
    # Without the flag, the variable that asked for them is named.
    assert main(["serve", "--port", "0"]) == 2
    assert "invalid setting CALLBRIDGE_SERVER_WORKERS: 3 workers" in capsys.readouterr().err


class RecordedWrites:
    """A stand-in for stderr that keeps each write call apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_each_log_line_is_one_write_with_the_workers_number(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers share stderr: a line written in two parts (text, then newline) could have
    another worker's line land between them."""
    import json

    import structlog

    from bridge.observability import configure_logging

    stderr = RecordedWrites()
    monkeypatch.setattr(sys, "stderr", stderr)
    try:
        configure_logging("info", "json", process_fields={"worker": 2})
        structlog.get_logger("test").info("one line", calls=3)
    finally:
        structlog.reset_defaults()
    [write] = stderr.writes
    assert write.endswith("\n") and write.count("\n") == 1
    line = json.loads(write)
    assert (line["event"], line["calls"], line["worker"]) == ("one line", 3, 2)
