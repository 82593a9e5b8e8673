"""The client: one gRPC channel, typed creates, and operation handles."""

from __future__ import annotations

import datetime
import os
import pathlib
import sys
import time
import uuid
from typing import Callable, Iterator, List, Optional, TypeVar

import grpc

# The generated stubs use their protos' own package names (longrun.v1,
# google.longrunning), so their directory goes on the import path.
_GEN = pathlib.Path(__file__).resolve().parent / "_gen"
if str(_GEN) not in sys.path:
    sys.path.append(str(_GEN))

from google.longrunning import operations_pb2, operations_pb2_grpc  # noqa: E402
from google.protobuf import any_pb2, duration_pb2, message  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from longrun.v1 import (  # noqa: E402
    batches_pb2,
    batches_pb2_grpc,
    diagnostics_pb2,
    diagnostics_pb2_grpc,
    metadata_pb2,
    reports_pb2,
    reports_pb2_grpc,
    watch_pb2,
    watch_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)

M = TypeVar("M", bound=message.Message)

# The longest one WaitOperation call is asked to block.
_WAIT_STEP = 30.0
# How many times in a row a broken watch is opened again.
_RECONNECTS = 8
# How often the library itself retries a call the server could not take
# (UNAVAILABLE), with the same request_id, so a retry never creates twice.
_ATTEMPTS = 4


class LongrunError(Exception):
    """A refused call, or a failed operation: its google.rpc code, message,
    ErrorInfo reason and metadata, and the BadRequest fields at fault."""

    def __init__(self, status: status_pb2.Status):
        self.status = status
        self.code = status.code
        self.message = status.message
        self.reason = ""
        self.metadata: dict = {}
        self.field_violations: List[error_details_pb2.BadRequest.FieldViolation] = []
        self.details: List[any_pb2.Any] = list(status.details)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                self.reason = info.reason
                self.metadata = dict(info.metadata)
            elif detail.Unpack(bad):
                self.field_violations.extend(bad.field_violations)
        name = _CODES.get(self.code, str(self.code))
        super().__init__(f"{name}: {self.message} ({self.reason or 'no reason'})")

    @classmethod
    def of_rpc(cls, error: grpc.RpcError) -> "LongrunError":
        """The error a refused call carries (its rich status, when sent)."""
        status = status_pb2.Status(code=error.code().value[0], message=error.details() or "")
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                status.ParseFromString(value)
        return cls(status)


class OperationFailed(LongrunError):
    """The operation ended with an error."""

    def __init__(self, operation, status: status_pb2.Status):
        self.operation = operation
        super().__init__(status)


_CODES = {code.value[0]: name for name, code in grpc.StatusCode.__members__.items()}


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(datetime.timedelta(seconds=seconds))
    return d


def _fresh(request_id: Optional[str]) -> str:
    return request_id or str(uuid.uuid4())


# The requests both clients send, made in one place.


def _sleep_request(seconds: float, steps: int, fail_code: int, request_id: Optional[str]):
    return diagnostics_pb2.SleepRequest(
        duration=_duration(seconds), steps=steps, fail_code=fail_code, request_id=_fresh(request_id)
    )


def _enqueue_request(
    kind: str, payload: message.Message, request_id: Optional[str], max_attempts=0
):
    any_payload = any_pb2.Any()
    any_payload.Pack(payload)
    return workers_pb2.EnqueueRequest(
        kind=kind, payload=any_payload, request_id=_fresh(request_id), max_attempts=max_attempts
    )


def _report_request(month: str, format: str, request_id: Optional[str]):
    return reports_pb2.CreateReportRequest(
        month=month,
        format=reports_pb2.ReportFormat.Value(format.upper()),
        request_id=_fresh(request_id),
    )


def _list_request(filter: str, page_size: int, token: str):
    return operations_pb2.ListOperationsRequest(
        name="operations", filter=filter, page_size=page_size, page_token=token
    )


def _call(fn: Callable, request, metadata):
    """Calls `fn`, again with the same request while the server is briefly
    unavailable."""
    for attempt in range(_ATTEMPTS):
        try:
            return fn(request, metadata=metadata)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < _ATTEMPTS:
                time.sleep(0.2 * 2**attempt)
                continue
            raise LongrunError.of_rpc(e) from None
    raise AssertionError("unreachable")


class _Handle:
    """What both operation handles know: the latest state read."""

    def _set(self, proto: operations_pb2.Operation) -> None:
        self.proto = proto
        self.metadata = metadata_pb2.OperationMetadata()
        proto.metadata.Unpack(self.metadata)

    @property
    def name(self) -> str:
        return self.proto.name

    @property
    def done(self) -> bool:
        return self.proto.done

    @property
    def state(self) -> str:
        """QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING or CANCELLED."""
        return metadata_pb2.State.Name(self.metadata.state)

    @property
    def progress_percent(self) -> int:
        return self.metadata.progress_percent

    @property
    def estimated_end_time(self) -> Optional[datetime.datetime]:
        """When the server expects it to end, if it can tell."""
        if not self.metadata.HasField("estimated_end_time"):
            return None
        return self.metadata.estimated_end_time.ToDatetime(tzinfo=datetime.timezone.utc)

    def _wait_request(self, deadline: Optional[float], timeout: Optional[float], now: float):
        """The next WaitOperation request, or TimeoutError once `deadline`
        has passed."""
        left = _WAIT_STEP if deadline is None else deadline - now
        if left <= 0:
            raise TimeoutError(f"{self.name} is not done after {timeout} s")
        return operations_pb2.WaitOperationRequest(
            name=self.name, timeout=_duration(min(left, _WAIT_STEP))
        )

    def _outcome(self, response_type: Optional[type]):
        """The response of a done operation (unpacked into `response_type`
        when given), or OperationFailed."""
        if self.proto.HasField("error"):
            raise OperationFailed(self, self.proto.error)
        if response_type is None:
            return self.proto.response
        response = response_type()
        if not self.proto.response.Unpack(response):
            raise TypeError(f"{self.name}'s response is a {self.proto.response.type_url}")
        return response

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.state}, {self.progress_percent}%)"


class Operation(_Handle):
    """A handle on one operation: its latest known state, and ways to
    follow it."""

    def __init__(self, client: "Client", proto: operations_pb2.Operation):
        self._client = client
        self._set(proto)

    def refresh(self) -> "Operation":
        """Reads its state again."""
        self._set(self._client._get(self.name))
        return self

    def result(self, timeout: Optional[float] = None, response_type: Optional[type] = None):
        """Blocks until it is done (with WaitOperation, which the server
        answers as soon as it ends, never blind polling) and returns its
        response, unpacked into `response_type` when given. Raises
        OperationFailed when it failed, TimeoutError after `timeout`
        seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            request = self._wait_request(deadline, timeout, time.monotonic())
            self._set(
                _call(self._client._operations.WaitOperation, request, self._client._metadata)
            )
        return self._outcome(response_type)

    def watch(self) -> Iterator["Operation"]:
        """Its states as they change, ending with the final one. A stream
        that breaks (the server restarted, say) is opened again, and goes
        on from the state the server has then."""
        request = watch_pb2.WatchOperationRequest(name=self.name)
        broken = 0
        while True:
            try:
                for proto in self._client._watcher.WatchOperation(
                    request, metadata=self._client._metadata
                ):
                    broken = 0
                    self._set(proto)
                    yield self
                if self.done:
                    return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or broken >= _RECONNECTS:
                    raise LongrunError.of_rpc(e) from None
            broken += 1
            time.sleep(min(0.2 * 2**broken, 5.0))

    def cancel(self) -> None:
        """Asks it to stop; it ends CANCELLED (or as it ends anyway)."""
        _call(
            self._client._operations.CancelOperation,
            operations_pb2.CancelOperationRequest(name=self.name),
            self._client._metadata,
        )


class _Jobs:
    def __init__(self, client: "Client"):
        self._client = client

    def enqueue(
        self,
        kind: str,
        payload: message.Message,
        *,
        request_id: Optional[str] = None,
        max_attempts: int = 0,
    ) -> Operation:
        """Creates an operation of an outside kind, served by workers."""
        request = _enqueue_request(kind, payload, request_id, max_attempts)
        return self._client._created(self._client._jobs.Enqueue, request)


class _Reports:
    def __init__(self, client: "Client"):
        self._client = client

    def create(
        self, month: str, format: str = "CSV", *, request_id: Optional[str] = None
    ) -> Operation:
        """Renders the month (YYYY-MM) as CSV, JSON or PDF."""
        request = _report_request(month, format, request_id)
        return self._client._created(self._client._reports.CreateReport, request)


class _Orders:
    def __init__(self, client: "Client"):
        self._client = client

    def import_file(
        self,
        path: str,
        *,
        progress: Optional[Callable[[int, int], None]] = None,
        request_id: Optional[str] = None,
        chunk_size: int = 1 << 20,
    ) -> Operation:
        """Uploads an orders CSV and starts its import; `progress(sent,
        total)` is called as the bytes go."""
        total = os.path.getsize(path)
        request_id = request_id or str(uuid.uuid4())

        def chunks():
            sent = 0
            with open(path, "rb") as f:
                first = True
                while True:
                    data = f.read(chunk_size)
                    if not data and not first:
                        return
                    message = reports_pb2.ImportOrdersRequest(csv_chunk=data)
                    if first:
                        message.request_id = request_id
                        first = False
                    sent += len(data)
                    yield message
                    if progress is not None:
                        progress(sent, total)
                    if not data:
                        return

        try:
            proto = self._client._reports.ImportOrders(chunks(), metadata=self._client._metadata)
        except grpc.RpcError as e:
            raise LongrunError.of_rpc(e) from None
        return Operation(self._client, proto)


class _Operations:
    def __init__(self, client: "Client"):
        self._client = client

    def list(self, filter: str = "", page_size: int = 100) -> Iterator[Operation]:
        """Every operation the filter matches, newest first, a page at a
        time."""
        token = ""
        while True:
            request = _list_request(filter, page_size, token)
            page = _call(self._client._operations.ListOperations, request, self._client._metadata)
            for proto in page.operations:
                yield Operation(self._client, proto)
            token = page.next_page_token
            if not token:
                return


class Client:
    """A connection to a longrun server.

    `server` is host:port; `token` a bearer token; `tls` True for the
    system's roots, or grpc.ChannelCredentials of your own.
    """

    def __init__(self, server: str = "127.0.0.1:50051", *, token: Optional[str] = None, tls=False):
        if tls:
            credentials = (
                tls if isinstance(tls, grpc.ChannelCredentials) else grpc.ssl_channel_credentials()
            )
            self._channel = grpc.secure_channel(server, credentials)
        else:
            self._channel = grpc.insecure_channel(server)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._operations = operations_pb2_grpc.OperationsStub(self._channel)
        self._watcher = watch_pb2_grpc.OperationWatcherStub(self._channel)
        self._diagnostics = diagnostics_pb2_grpc.DiagnosticsStub(self._channel)
        self._jobs = workers_pb2_grpc.JobsStub(self._channel)
        self._reports = reports_pb2_grpc.ReportServiceStub(self._channel)
        self._bulk = batches_pb2_grpc.BulkStub(self._channel)
        self.jobs = _Jobs(self)
        self.reports = _Reports(self)
        self.orders = _Orders(self)
        self.operations = _Operations(self)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _created(self, fn: Callable, request) -> Operation:
        return Operation(self, _call(fn, request, self._metadata))

    def _get(self, name: str) -> operations_pb2.Operation:
        request = operations_pb2.GetOperationRequest(name=name)
        return _call(self._operations.GetOperation, request, self._metadata)

    def sleep(
        self,
        seconds: float,
        *,
        steps: int = 1,
        fail_code: int = 0,
        request_id: Optional[str] = None,
    ) -> Operation:
        """A Diagnostics.Sleep operation of known length (for trying things)."""
        request = _sleep_request(seconds, steps, fail_code, request_id)
        return self._created(self._diagnostics.Sleep, request)

    def operation(self, name: str) -> Operation:
        """Comes back to an operation by name (after a restart, say)."""
        return Operation(self, self._get(name))

    def retry(self, name: str) -> Operation:
        """Puts a failed or cancelled operation back in the queue."""
        request = batches_pb2.RetryOperationRequest(name=name)
        return self._created(self._bulk.RetryOperation, request)
