"""Error translation, driven with a fake stream: status, the message a caller may read, the
`ensign-error` trailer, and the one table from error class to CLI exit code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

from ensign.daemon import errors
from ensign.daemon.errors import ERROR_KEY, EnsignError, exit_code_for
from ensign.daemon.server import public_message, translated
from ensign.daemon.tpm.errors import TpmUnavailable

PATH = "/ensign.test.v1.Test/Do"


class FakeStream:
    """What the translation uses of a grpclib server stream: the trailing metadata."""

    def __init__(self, fail: bool = False) -> None:
        self.trailers: list[tuple[Status, str, dict[str, str]]] = []
        self.fail = fail

    async def send_trailing_metadata(self, *, status: Status, status_message: str,
                                     metadata: dict[str, str]) -> None:
        if self.fail:
            raise RuntimeError("trailers were sent already")
        self.trailers.append((status, status_message, metadata))


def _call(raise_: BaseException | None, stream: FakeStream | None = None) -> FakeStream:
    stream = stream or FakeStream()

    async def method(s: Any) -> None:
        assert s is stream
        if raise_ is not None:
            raise raise_

    func: Callable[[Any], Coroutine[Any, Any, None]] = method
    service = translated({PATH: Handler(func, Cardinality.UNARY_UNARY, None, None)})
    asyncio.run(service.__mapping__()[PATH].func(stream))
    return stream


# The one table (daemon/errors.py): class -> (gRPC status, exit code, detail shown to caller).
TABLE = [
    (errors.InvalidRequest, Status.INVALID_ARGUMENT, 64, True),
    (errors.TokenInvalid, Status.INVALID_ARGUMENT, 65, True),
    (errors.Conflict, Status.ALREADY_EXISTS, 65, True),
    (errors.InvalidTransition, Status.FAILED_PRECONDITION, 65, True),
    (errors.NotFound, Status.NOT_FOUND, 66, True),
    (errors.AttestationError, Status.UNAVAILABLE, 69, False),
    (TpmUnavailable, Status.UNAVAILABLE, 69, False),
    (errors.StoreError, Status.UNAVAILABLE, 74, False),
    (errors.SigningError, Status.INTERNAL, 70, False),
    (errors.AuditUnavailable, Status.UNAVAILABLE, 74, True),
    (errors.PermissionDenied, Status.PERMISSION_DENIED, 77, True),
    (errors.NoIdentity, Status.PERMISSION_DENIED, 77, False),
    (errors.CallerGone, Status.UNAUTHENTICATED, 77, False),
    (EnsignError, Status.INTERNAL, 70, False),
]


@pytest.mark.parametrize(("cls", "status", "exit_code", "detailed"), TABLE,
                         ids=[c.__name__ for c, *_ in TABLE])
def test_each_error_class_becomes_its_status_message_and_trailer(
    cls: type[EnsignError], status: Status, exit_code: int, detailed: bool,
) -> None:
    secret = "/srv/agents/bin selectors unix:uid:0"  # what an attacker would like to read
    stream = _call(cls(secret))
    message = secret if detailed else cls.public_message
    assert stream.trailers == [(status, message, {ERROR_KEY: cls.__name__})]
    # The CLI maps the trailer back to the same exit code as the error raised locally.
    assert exit_code_for(status, cls.__name__) == cls.exit_code == exit_code


def test_a_detailed_error_without_text_shows_its_public_message() -> None:
    assert public_message(errors.NotFound("")) == "not found"
    assert _call(errors.NotFound("")).trailers[0][1] == "not found"


def test_when_trailers_cannot_be_sent_the_status_is_raised() -> None:
    stream = FakeStream(fail=True)
    with pytest.raises(GRPCError) as raised:
        _call(errors.PermissionDenied("audience x not allowed"), stream)
    assert (raised.value.status, raised.value.message) == (Status.PERMISSION_DENIED,
                                                           "audience x not allowed")


def test_a_malformed_message_is_invalid_argument() -> None:
    with pytest.raises(GRPCError) as raised:
        _call(DecodeError("Error parsing message with type 'X'"))
    assert (raised.value.status, raised.value.message) == (Status.INVALID_ARGUMENT,
                                                           "malformed request message")


def test_an_unknown_exception_is_internal_and_says_nothing_more() -> None:
    with pytest.raises(GRPCError) as raised:
        _call(KeyError("/etc/ensign/secret-path"))
    assert (raised.value.status, raised.value.message) == (Status.INTERNAL, "internal error")


def test_grpc_errors_and_success_pass_through() -> None:
    with pytest.raises(GRPCError) as raised:
        _call(GRPCError(Status.UNIMPLEMENTED, "not implemented"))
    assert raised.value.status == Status.UNIMPLEMENTED
    assert _call(None).trailers == []


def test_handlers_keep_their_cardinality_and_types() -> None:
    async def method(s: Any) -> None:
        pass

    h = Handler(method, Cardinality.UNARY_STREAM, int, str)
    wrapped = translated({PATH: h}).__mapping__()[PATH]
    assert (wrapped.cardinality, wrapped.request_type, wrapped.reply_type) == (
        Cardinality.UNARY_STREAM, int, str)
    assert wrapped.func is not method and wrapped.func.__name__ == "Do"


@pytest.mark.parametrize(("status", "expect"), [
    (Status.INVALID_ARGUMENT, 64), (Status.NOT_FOUND, 66), (Status.ALREADY_EXISTS, 65),
    (Status.FAILED_PRECONDITION, 65), (Status.UNAVAILABLE, 69), (Status.UNAUTHENTICATED, 77),
    (Status.PERMISSION_DENIED, 77), (Status.INTERNAL, 70), (Status.DEADLINE_EXCEEDED, 75),
    (Status.UNIMPLEMENTED, 64), (Status.RESOURCE_EXHAUSTED, 75), (Status.DATA_LOSS, 70),
])
def test_exit_code_without_a_known_error_class_follows_the_status(status: Status,
                                                                  expect: int) -> None:
    assert exit_code_for(status) == expect
    assert exit_code_for(status, "NoSuchError") == expect  # an unknown trailer changes nothing
