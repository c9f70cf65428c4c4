"""The one exception tree of callbridge, split by whose fault it is.

    CallbridgeError
    ├── ConfigError             a setting is wrong; start-up stops (names the setting)
    ├── PeerError               the media peer sent something we cannot accept
    │   ├── ProtocolViolation       malformed JSON, unknown event, wrong order (close 1002)
    │   ├── InvalidPayload          bad base64 (close 1007)
    │   │   └── InvalidNumber           a number that is not one, or out of its bounds
    │   ├── UnsupportedData         unknown codec or track, binary on a JSON dialect (close 1003)
    │   ├── AuthenticationFailed    a missing or wrong credential (close 1008)
    │   ├── PolicyRefusal           no start in time, a call id in use, at capacity (1008/1013)
    │   └── MessageTooBig           a message over the configured size (close 1009)
    ├── UpstreamError           the speech-to-text service failed a leg
    │   ├── UpstreamRefused         bad key or bad parameters: fatal for that leg, never retried
    │   └── UpstreamUnavailable     connect failure, timeout or dropped socket: may be retried
    │       └── EngineAtCapacity        no room for another session (our limit, or HTTP 429)
    ├── DeliveryError           a webhook attempt failed (carries ``status`` when there was one)
    ├── ClusterError            an admin action for a call another instance holds went wrong
    │   ├── ClusterMessageInvalid   a message on a cluster channel is not a valid command or reply
    │   └── OwnerUnreachable        the instance holding the call did not answer in time (504)
    ├── OutboxDiskFull          the disk under the outbox is full: events are not being stored
    ├── ArtifactStoreError      a call's artifacts could not be written to or read from the store
    └── RecordingWithheld       a call's recording cannot be made safe within its bounds

Anything else raised inside the bridge is our own bug: the media connection is closed with
1011 and the traceback logged.

Messages never include audio, transcript text or secrets: exceptions are logged as they are.
"""

from __future__ import annotations

# WebSocket close codes, RFC 6455 section 7.4.1.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_ABNORMAL = 1006  # never sent: the connection ended without a close frame
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455's registry: the server is overloaded
NORMAL_CLOSES = frozenset({CLOSE_NORMAL, CLOSE_GOING_AWAY})  # an end, not a failure
# error.code of transcription.error and transcription.failover when an engine is full.
ENGINE_CAPACITY = "engine_capacity"


class CallbridgeError(Exception):
    """Root of every error callbridge raises on purpose."""


class ConfigError(CallbridgeError):
    """A configuration value is missing or wrong; ``setting`` names it as the user writes it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(setting, problem)
        self.setting = setting
        self.problem = problem

    def __str__(self) -> str:
        return f"invalid setting {self.setting}: {self.problem}"


class PeerError(CallbridgeError):
    """A peer broke the protocol: a media connection closes with ``close_code``, an HTTP
    request is answered with ``http_status``."""

    close_code = CLOSE_PROTOCOL_ERROR
    http_status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ProtocolViolation(PeerError):
    """Malformed JSON, an unknown event, a missing field or an event out of order."""

    close_code = CLOSE_PROTOCOL_ERROR


class InvalidPayload(PeerError):
    """The message is well formed but its content is unusable (bad base64, unknown codec)."""

    close_code = CLOSE_INVALID_PAYLOAD


class InvalidNumber(InvalidPayload):
    """A number read from the network is malformed or outside its bounds (``bridge.numbers``).

    The message names the field, never more than the field's name and the bounds.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class UnsupportedData(PeerError):
    """A kind of frame this dialect never carries (a binary frame on a JSON dialect)."""

    close_code = CLOSE_UNSUPPORTED_DATA


class AuthenticationFailed(PeerError):
    """The stream's credentials are missing or wrong: the handshake's for the dialect the
    stream turned out to be, or its in-band token (a custom parameter)."""

    close_code = CLOSE_POLICY_VIOLATION
    http_status = 401


class PolicyRefusal(PeerError):
    """The peer did nothing malformed, but the bridge's policy refuses the stream: no start
    message within ``server.start_timeout_s``, a call id another live stream holds, a dialect
    that is not enabled. ``close_code`` is 1008, or 1013 (try again later) at capacity."""

    close_code = CLOSE_POLICY_VIOLATION

    def __init__(self, reason: str, *, close_code: int = CLOSE_POLICY_VIOLATION) -> None:
        super().__init__(reason)
        self.close_code = close_code


class MessageTooBig(PeerError):
    """A message larger than ``server.max_message_bytes``."""

    close_code = CLOSE_MESSAGE_TOO_BIG


class UpstreamError(CallbridgeError):
    """The speech-to-text session of one leg failed."""

    def __init__(self, reason: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.status = status

    def __str__(self) -> str:
        parts = [self.reason]
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.status is not None:
            parts.append(f"status={self.status}")
        return " ".join(parts)


class UpstreamRefused(UpstreamError):
    """The service refused the session (authentication, parameters): retrying cannot help."""


class UpstreamUnavailable(UpstreamError):
    """The service could not be reached or dropped the session: a later attempt may succeed."""


class EngineAtCapacity(UpstreamUnavailable):
    """An engine has no room for another session: its ``max_streams`` are all in use (in this
    process, or across the cluster), or the service itself refused the handshake with HTTP 429.
    The leg waits for a slot (or takes the secondary engine); ``code`` is ``engine_capacity``."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason, code=ENGINE_CAPACITY, status=status)


class DeliveryError(CallbridgeError):
    """One webhook delivery attempt failed."""

    def __init__(self, reason: str, *, status: int | None = None, retryable: bool = True,
                 retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.reason if self.status is None else f"{self.reason} status={self.status}"


class OutboxDiskFull(CallbridgeError):
    """The disk under the outbox is full: the events of that write were not stored."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ClusterError(CallbridgeError):
    """An admin action sent through the cluster's Redis to another instance went wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ClusterMessageInvalid(ClusterError):
    """A message read from a cluster channel or reply list is not one an instance sends
    (too big, not JSON, a field missing or out of bounds, a bad signature): it is dropped."""


class OwnerUnreachable(ClusterError):
    """The instance holding a call did not take an admin action (``instance`` names it):
    nothing listens on its channel, or no reply came within ``cluster.command_timeout_s``."""

    def __init__(self, instance: str, reason: str) -> None:
        super().__init__(reason)
        self.instance = instance

    def __str__(self) -> str:
        return f"instance {self.instance} {self.reason}"


class ArtifactStoreError(CallbridgeError):
    """The artifact store (a local folder or an object store) failed a write or a read: the
    call's events are unaffected; its files are missing from the store."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class RecordingWithheld(CallbridgeError):
    """A call's recording cannot be made safe within its bounds (too many spans to silence):
    it is not written. ``reason`` says why, without any of the call's content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason
