"""The ``callbridge`` command: one function per subcommand."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import structlog

from bridge import __version__
from bridge.config import (
    Settings,
    SttTarget,
    describe,
    given_as,
    load_settings,
    override,
    stt_target,
    uses_telnyx_protocol,
)
from bridge.errors import CallbridgeError, ConfigError
from bridge.events import AudioEncoding, Track
from bridge.observability import configure_logging

DEFAULT_WAIT_S: Final = 15.0  # the embedded recognizer takes ~8 s to start on a busy machine


SERVE_EPILOG: Final = """\
settings come from a TOML file (--config, or $CALLBRIDGE_CONFIG; every setting is
documented in config/callbridge.toml), then from environment variables, which win.
The main variables:
Every setting has one, CALLBRIDGE_<SECTION>_<KEY>; the main ones:
  TELNYX_API_KEY              Telnyx speech-to-text; without it (and without
                              CALLBRIDGE_TELNYX_URL) the embedded recognizer is started
  CALLBRIDGE_STT_ENGINE       telnyx, deepgram or assemblyai (with DEEPGRAM_API_KEY
                              or ASSEMBLYAI_API_KEY)
  CALLBRIDGE_WEBHOOKS_URLS    comma-separated webhook URLs
  CALLBRIDGE_WEBHOOKS_SECRET  whsec_... secret that signs them
  CALLBRIDGE_SERVER_HOST, CALLBRIDGE_SERVER_PORT   listen address (127.0.0.1:8080)
  CALLBRIDGE_OUTBOX_PATH      the webhook outbox file (SQLite)
  CALLBRIDGE_SERVER_ADMIN_TOKEN   turns on the admin API and live captions
  CALLBRIDGE_LOGGING_LEVEL, CALLBRIDGE_LOGGING_FORMAT   info|debug..., auto|json|console
  CALLBRIDGE_REDIS_URL        cluster mode: instances share calls, captions, delivery;
                              --workers N (CALLBRIDGE_SERVER_WORKERS) needs it
Older names (CALLBRIDGE_PORT, CALLBRIDGE_WEBHOOK_URLS, ...) still work, with one
deprecation line each.
Once it accepts calls, serve prints one line on stdout: "callbridge: ready on ...".
"""

SIMULATE_SPEED_HELP: Final = (
    "pace multiplier: 1 is real time (default), 2 twice as fast. 0 sends as fast as the "
    "socket takes it: a load test of the media path, not a way to get transcripts, since "
    "the bridge drops (and counts) the audio its speech-to-text engine cannot take in time; "
    "engines take about real time, the embedded recognizer a few times that")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


def build_parser() -> argparse.ArgumentParser:
    """The ``callbridge`` command line: each subcommand's ``run`` is set as a default."""
    parser = argparse.ArgumentParser(
        prog="callbridge", description="Telephony media streams in, transcripts out.")
    parser.add_argument("--version", action="version", version=f"callbridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "settings file in TOML (default: $CALLBRIDGE_CONFIG, else none)"

    serve = commands.add_parser(
        "serve", help="run the bridge server", description="Run the bridge server: media "
        "streams in on /streams/<provider>, transcripts out to webhooks.",
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--config", help=config_help)
    serve.add_argument("--host", help="listen address (overrides server.host, "
                       "CALLBRIDGE_SERVER_HOST)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port, "
                       "CALLBRIDGE_SERVER_PORT); 0 picks a free one, named on the ready line")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="serving processes on this port (overrides server.workers, "
                       "CALLBRIDGE_SERVER_WORKERS; default 1); above 1 needs cluster mode "
                       "(CALLBRIDGE_REDIS_URL): each is a cluster member")
    # One worker of --workers, as its parent starts it: which one, and the inherited socket.
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(run=run_serve)

    local = commands.add_parser(
        "stt-local", help="run the embedded recognizer (Whisper tiny.en, offline) alone",
        description="Run the embedded recognizer: the Telnyx speech-to-text protocol, "
        "offline. `serve` starts one itself when no engine is configured.")
    local.add_argument("--config", help=config_help)
    local.add_argument("--host", help="listen address (default 127.0.0.1)")
    local.add_argument("--port", type=int, help="listen port; 0 picks a free one")
    local.add_argument("--workers", type=int, help="recognition processes (0: one per CPU)")
    local.add_argument("--max-sessions", type=int,
                       help="concurrent sessions served (0: 8 per recognition process)")
    local.add_argument("--model", choices=("whisper-tiny.en", "pocketsphinx"),
                       help="recognition model (default: local_stt.model, whisper-tiny.en)")
    local.add_argument("--announce", action="store_true",
                       help="print {\"port\": N} on stdout once ready (for a supervisor)")
    local.add_argument("--exit-with-parent", action="store_true",
                       help="exit when the parent process is gone")
    local.set_defaults(run=run_stt_local)

    demo = commands.add_parser(
        "demo", help="run a whole sample call offline, with captions",
        description="Stream the bundled two-leg sample call through a bridge and the "
        "embedded recognizer, with live captions, word error rates and delivery results.")
    demo.add_argument("--speed", type=float, default=1.0, choices=(1.0, 2.0, 4.0),
                      metavar="{1,2,4}",
                      help="pace multiplier: 1 is real time; 4 is the most the embedded "
                           "recognizer sustains on a busy two-core machine")
    demo.add_argument("--model", choices=("whisper-tiny.en", "pocketsphinx"),
                      default="whisper-tiny.en", help="embedded recognition model")
    demo.add_argument("--no-live", action="store_true",
                      help="print finals only, even on a terminal")
    demo.set_defaults(run=run_demo_command)

    sim = commands.add_parser(
        "simulate", help="stream audio files to a bridge as a call",
        description="Stream audio files to a running bridge as a Twilio or Telnyx media "
        "stream would, one track per file. Waits for the bridge to answer first (--wait).")
    sim.add_argument("url", help="bridge URL, e.g. ws://127.0.0.1:8080 or .../streams/telnyx")
    sim.add_argument("audio", type=Path, help="inbound (caller) audio: .wav or raw G.711")
    sim.add_argument("--outbound", type=Path, help="outbound (agent) audio for a second track")
    sim.add_argument("--dialect", choices=("twilio", "telnyx"), default="twilio",
                     help="the provider's message format (default: twilio)")
    sim.add_argument("--codec", choices=("pcmu", "pcma"), default="pcmu",
                     help="G.711 law (Twilio streams are always pcmu)")
    sim.add_argument("--speed", type=float, default=1.0, help=SIMULATE_SPEED_HELP)
    sim.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                     help="wait up to this long for the bridge to answer /healthz before "
                     f"streaming (default {DEFAULT_WAIT_S:g}; 0 checks once)")
    sim.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="custom parameter (repeatable)")
    sim.add_argument("--call-id", help="call id to announce (default: random)")
    sim.set_defaults(run=run_simulate)

    outbox = commands.add_parser(
        "outbox", help="inspect and repair the webhook outbox",
        description="Inspect and repair the webhook outbox file (outbox.path); safe beside "
        "a running bridge. Shows ids, types and states, never transcript text.")
    outbox.add_argument("--config", help=config_help)
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True,
                                            metavar="ACTION")
    outbox_commands.add_parser("status", help="pending, retrying and dead counts per target")
    listing = outbox_commands.add_parser("list", help="list undelivered events (no text)")
    listing.add_argument("--dead", action="store_true", help="dead-lettered events")
    listing.add_argument("--limit", type=int, default=100,
                         help="at most this many events (default 100)")
    replay = outbox_commands.add_parser(
        "replay", help="deliver dead events again (re-enables a disabled target)")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="one event, by its webhook-id")
    which.add_argument("--dead", action="store_true", help="every dead-lettered event")
    purge = outbox_commands.add_parser("purge", help="delete finished events")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                       help="delete delivered and dead events older than this")
    outbox.set_defaults(run=run_outbox)
    return parser


def _settings_or_exit(args: argparse.Namespace, *, quiet: bool = False) -> Settings | None:
    """Settings with the command's options applied, or None after one line on stderr.
    ``quiet``: without deprecation lines (a parent process printed them)."""
    try:
        config = getattr(args, "config", None)
        settings = load_settings(config, warn=_ignore) if quiet else load_settings(config)
        if getattr(args, "host", None):
            settings = override(settings, "server", host=args.host)
        if getattr(args, "port", None) is not None:
            settings = override(settings, "server", port=args.port)
            if not 0 <= args.port <= 65535:
                raise ConfigError("--port", "must be 0-65535 (0: a free port)")
    except ConfigError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return None
    return settings


def run_serve(args: argparse.Namespace) -> int:
    from bridge.web.serve import bind_listener

    if args.listen_fd is not None:
        return _run_worker(args)
    settings = _settings_or_exit(args)
    if settings is None:
        return 2
    workers = args.workers if args.workers is not None else settings.server.workers
    if workers != 1:
        return _run_workers(args, settings, workers)
    from bridge.delivery.outbox import secure_location
    from bridge.stt.engines import check_engine_proxies
    from bridge.tracing import check_tracing

    try:
        secure_location(settings.outbox.path)  # its directory too, before anything is logged
        _check_artifacts_folder(settings)
        check_tracing()
        check_engine_proxies(settings)
        listener = bind_listener(settings.server.host, settings.server.port,
                                 _given_as(args.port, "port"), _given_as(args.host, "host"))
    except ConfigError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    try:
        return _serve_on(settings, listener, args.config)
    finally:
        listener.close()


def _check_artifacts_folder(settings: Settings) -> None:
    """With artifacts kept on this machine, their folder made and writable, or a
    ``ConfigError`` naming ``artifacts.dir`` before anything starts."""
    if settings.artifacts.enabled and settings.artifacts.store == "local":
        from bridge.artifacts.store import prepare_local_store

        prepare_local_store(settings)


def _run_workers(args: argparse.Namespace, settings: Settings, count: int) -> int:
    """``serve --workers N``: the parent of N serving processes (bridge/web/workers.py)."""
    from bridge.delivery.outbox import secure_location
    from bridge.stt.engines import check_engine_proxies
    from bridge.tracing import check_tracing
    from bridge.web.workers import Supervisor, bind_worker_sockets, plan_workers

    try:
        workers = plan_workers(settings, count, _given_as(args.workers, "workers"))
        for worker in workers:
            secure_location(worker.outbox_path)
        _check_artifacts_folder(settings)
        check_tracing()
        check_engine_proxies(settings)
        sockets = bind_worker_sockets(settings.server.host, settings.server.port, count,
                                      _given_as(args.port, "port"), _given_as(args.host, "host"))
    except ConfigError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging.level, settings.logging.format)
    try:  # the workers inherit the environment, CALLBRIDGE_CONFIG with it
        supervisor = Supervisor(workers, sockets, host=settings.server.host,
                                config=args.config)
        return asyncio.run(supervisor.run())
    finally:
        for sock in sockets:
            sock.close()


def _run_worker(args: argparse.Namespace) -> int:
    """One worker of ``serve --workers``, on the socket its parent passed down."""
    settings = _settings_or_exit(args, quiet=True)
    listener = socket.socket(fileno=args.listen_fd)
    try:
        if settings is None:
            return 2
        return _serve_on(settings, listener, args.config, worker=args.worker)
    finally:
        listener.close()


def _serve_on(settings: Settings, listener: socket.socket, config: str | None,
              worker: int | None = None) -> int:
    configure_logging(settings.logging.level, settings.logging.format,
                      process_fields={"worker": worker} if worker is not None else None)
    if uses_telnyx_protocol(settings) and stt_target(settings) is SttTarget.EMBEDDED:
        from bridge.stt.local import recognizer

        model = settings.local_stt.model
        if not recognizer.available(model):
            print("callbridge: no TELNYX_API_KEY is set, and the embedded recognizer cannot "
                  f"run: {recognizer.missing_message(model)} (or set TELNYX_API_KEY)",
                  file=sys.stderr)
            return 2
    log = structlog.get_logger("bridge.serve")
    config = config or os.environ.get("CALLBRIDGE_CONFIG")
    log.info("callbridge starting", version=__version__, engine=settings.stt.engine,
             webhook_urls=len(settings.webhooks.urls), **({"config": config} if config else {}))
    log.debug("settings", **describe(settings))
    from bridge.web.media_socket import direct_reading_available

    if not direct_reading_available():
        log.warning("aiohttp lacks the frame reader API the media endpoint hands messages "
                    "from; media messages are read through aiohttp's queue instead")
    from bridge.compliance.redact import policy_for

    policy = policy_for(settings.compliance)
    if policy.enabled:
        log.info("bridge-side redaction on", policies=policy.names(),
                 hold_s=settings.compliance.hold_s, dtmf=settings.compliance.dtmf,
                 engine_redact=settings.telnyx.redact or None)
    else:
        log.warning("bridge-side redaction is OFF: card numbers, security codes and SSNs "
                    "reach webhooks as the engine wrote them", dtmf=settings.compliance.dtmf)
    if not settings.webhooks.urls:
        log.warning("no webhook URLs configured: transcripts are produced but sent nowhere")
    from bridge.web.media import ingress_exposure

    exposed = ingress_exposure(settings)
    if exposed and settings.server.require_ingress_auth:
        print(f"callbridge: server.require_ingress_auth is on, but these endpoints on "
              f"{settings.server.host} take streams without a credential: "
              + ", ".join(f"{name} (set {setting})" for name, setting in exposed.items()),
              file=sys.stderr)
        return 2
    if exposed:
        log.warning("media endpoints accept streams without a credential on a non-loopback "
                    "address; anyone who reaches them can open calls (see docs/security.md)",
                    host=settings.server.host, open=exposed)
    try:
        factory = event_loop_factory(settings.server.event_loop)
    except ConfigError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    log.info("event loop", loop="uvloop" if factory else "asyncio")
    from bridge.web.serve import serve
    from bridge.web.workers import serve_worker

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            status: int = runner.run(serve(settings, listener) if worker is None
                                     else serve_worker(settings, listener))
    except CallbridgeError as exc:  # the embedded recognizer refused to start, say
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    return status


def _given_as(option: object, key: str) -> str:
    """How the user gave a ``server`` setting (option, variable or file), to name it."""
    return f"--{key}" if option is not None else given_as("server", key)


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for ``uvloop``, and for ``auto`` when it is installed; else asyncio's."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("server.event_loop", "uvloop is not installed (it comes with "
                              "callbridge on CPython for Linux and macOS; pip install "
                              "uvloop)") from None
        return None
    return uvloop.new_event_loop


def _ignore(line: str) -> None:
    """Drop a deprecation line (for a process whose parent printed it)."""


def run_stt_local(args: argparse.Namespace) -> int:
    from bridge.stt.local import recognizer
    from bridge.stt.local.runner import serve_local

    try:
        # Started by serve (--exit-with-parent), which read the same environment and has
        # printed its deprecation lines already: the child stays quiet about them.
        settings = load_settings(args.config, warn=_ignore) if args.exit_with_parent \
            else load_settings(args.config)
        changes = {key: value for key, value in (
            ("host", args.host), ("port", args.port), ("workers", args.workers),
            ("max_sessions", args.max_sessions), ("model", args.model)) if value is not None}
        settings = override(settings, "local_stt", **changes)
        if not 0 <= settings.local_stt.port <= 65535:
            raise ConfigError("--port", "must be 0-65535")
    except ConfigError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging.level, settings.logging.format)
    model = settings.local_stt.model
    if not recognizer.available(model):
        print(f"callbridge: {recognizer.missing_message(model)}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve_local(settings.local_stt, announce=args.announce,
                                       exit_with_parent=args.exit_with_parent))
    except ConfigError as exc:  # the weights were refused: one line, no traceback
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2


def run_demo_command(args: argparse.Namespace) -> int:
    import aiohttp

    from bridge.demo import run_demo
    from bridge.stt.local import recognizer

    if not recognizer.available(args.model):
        print(f"callbridge demo: {recognizer.missing_message(args.model)}", file=sys.stderr)
        return 2
    configure_logging("error", "console")
    try:
        return asyncio.run(run_demo(speed=args.speed, model=args.model,
                                    live=False if args.no_live else None))
    except ConfigError as exc:
        print(f"callbridge demo: {exc}\nverdict: FAIL - the demo could not start",
              file=sys.stderr)
        return 2
    except (OSError, TimeoutError, aiohttp.ClientError) as exc:  # a call that never ended
        print(f"callbridge demo: verdict: FAIL - {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ncallbridge demo: interrupted", file=sys.stderr)
        return 130


def run_outbox(args: argparse.Namespace) -> int:
    """Operator commands; they open the outbox file directly (safe beside a running bridge)."""
    import json

    from bridge.delivery.outbox import Outbox

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    path = Path(settings.outbox.path)
    if not path.exists():
        print(f"callbridge outbox: no outbox at {path} (outbox.path, CALLBRIDGE_OUTBOX_PATH)",
              file=sys.stderr)
        return 1
    try:
        outbox = Outbox(path, max_events=settings.outbox.max_events,
                        retention_days=settings.outbox.retention_days)
    except ConfigError as exc:  # a file of a newer schema, or one it cannot open
        print(f"callbridge: {exc}", file=sys.stderr)
        return 2
    try:
        if args.outbox_command == "status":
            rows = outbox.status()
            print(f"outbox {path}: {outbox.event_count} events")
            print(f"{'target':24} {'pending':>8} {'retrying':>9} {'dead':>6} {'kept':>6}")
            for row in rows:
                flag = "  DISABLED" if row["disabled"] else ""
                print(f"{row['target']:24} {row['pending'] or 0:>8} {row['retrying'] or 0:>9} "
                      f"{row['dead'] or 0:>6} {row['delivered'] or 0:>6}{flag}")
        elif args.outbox_command == "list":
            for row in outbox.list_deliveries(dead=args.dead, limit=args.limit):
                print(json.dumps(row))
        elif args.outbox_command == "replay":
            count = outbox.replay(event_id=args.id, dead=args.dead)
            print(f"{count} deliveries queued again; a running bridge sends them within a second")
        elif args.outbox_command == "purge":
            count = outbox.purge(args.older_than * 86400, include_dead=True)
            print(f"{count} events older than {args.older_than:g} days deleted")
    finally:
        outbox.close()
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from bridge.simulate import (
        BridgeNotReady,
        CallSpec,
        build_call,
        load_audio,
        stream_call,
        stream_url,
        wait_for_bridge,
    )

    encoding = AudioEncoding(args.codec)
    if args.dialect == "twilio" and encoding is not AudioEncoding.PCMU:
        print("callbridge simulate: Twilio streams are always pcmu", file=sys.stderr)
        return 2
    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"callbridge simulate: --param expects NAME=VALUE, got {item!r}",
                  file=sys.stderr)
            return 2
        params[name] = value
    try:
        tracks = {Track.INBOUND: load_audio(args.audio, encoding)}
        if args.outbound:
            tracks[Track.OUTBOUND] = load_audio(args.outbound, encoding)
        url = stream_url(args.url, args.dialect)
    except (OSError, ValueError, EOFError) as exc:
        print(f"callbridge simulate: {exc}", file=sys.stderr)
        return 2
    spec = CallSpec(dialect=args.dialect, encoding=encoding, tracks=tracks,
                    custom_parameters=params, **({"call_id": args.call_id} if args.call_id
                                                 else {}))
    if args.wait < 0 or args.speed < 0:
        print("callbridge simulate: --wait and --speed must not be negative", file=sys.stderr)
        return 2
    try:
        asyncio.run(wait_for_bridge(url, args.wait))
    except BridgeNotReady as exc:
        print(f"callbridge simulate: {exc}", file=sys.stderr)
        return 1
    messages = build_call(spec)
    seconds = max(len(a) for a in tracks.values()) / 8000
    if args.speed == 0:
        print("callbridge simulate: --speed 0 outruns any engine; expect dropped audio and "
              "few transcripts (see --help)", file=sys.stderr)
    print(f"streaming {seconds:.1f}s of audio ({len(tracks)} track(s), {encoding.value}) "
          f"as call {spec.call_id} to {url}", file=sys.stderr)
    try:
        result = asyncio.run(stream_call(url, messages, speed=args.speed))
    except OSError as exc:
        print(f"callbridge simulate: cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
    print(f"sent {result.messages_sent} messages; bridge closed with {result.close_code}",
          file=sys.stderr)
    return 0 if result.messages_sent == len(messages) else 1
