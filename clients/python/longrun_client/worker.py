"""Serve kinds of work from Python with decorated functions:

    from longrun_client.worker import Retry, Worker

    worker = Worker("127.0.0.1:50051", capacity=4)

    @worker.kind("images.resize", max_attempts=3)
    def resize(job):
        request = job.unpack(ResizeRequest)
        for step in range(10):
            if job.cancelled:
                return None          # stops; the operation ends CANCELLED
            job.progress(step * 10, f"tile {step}")
            ...
        return ResizeResponse(...)  # any protobuf message

    worker.run()

The helper holds the Lease stream, runs up to `capacity` jobs at once in
threads, heartbeats each job's lease with its latest progress, passes
cancellation on (`job.cancelled`), and ends each attempt: Complete with
the returned message, Fail with `Retry` (retryable), `Failure` (final,
with its code) or any other exception (final, UNKNOWN, with its
message). A job's attempt `traceparent` is
`job.traceparent`.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Type

import grpc

from . import _client  # noqa: F401  (puts the generated stubs on the path)
from google.protobuf import any_pb2, duration_pb2, message  # noqa: E402
from google.rpc import status_pb2  # noqa: E402
from longrun.v1 import workers_pb2, workers_pb2_grpc  # noqa: E402

_UNKNOWN = 2
_CANCELLED = 1


class Retry(Exception):
    """Fails the attempt retryably: the operation is tried again later,
    while it has attempts left."""


class Failure(Exception):
    """Fails the operation for good with a google.rpc code (3 is
    INVALID_ARGUMENT, say) and a message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class _Kind:
    name: str
    handler: Callable
    max_attempts: int
    lease_seconds: int


@dataclass
class Job:
    """One attempt of one operation, as the handler sees it."""

    name: str
    attempt: int
    kind: str
    tenant: str
    payload: any_pb2.Any
    traceparent: str
    _cancel: threading.Event = field(repr=False, default_factory=threading.Event)
    _progress: list = field(repr=False, default_factory=lambda: [0, ""])

    @property
    def cancelled(self) -> bool:
        """True once a client asked the operation to stop."""
        return self._cancel.is_set()

    def unpack(self, message_type: Type[message.Message]) -> message.Message:
        """The payload as `message_type`."""
        out = message_type()
        if not self.payload.Unpack(out):
            raise TypeError(f"the payload is a {self.payload.type_url}")
        return out

    def progress(self, percent: int, status: str = "") -> None:
        """Reports progress; sent with the next heartbeat."""
        self._progress[:] = [max(0, min(100, int(percent))), status]


class Worker:
    """Serves the kinds registered with `kind` on the server at `server`."""

    def __init__(
        self,
        server: str = "127.0.0.1:50051",
        *,
        token: Optional[str] = None,
        capacity: int = 4,
        name: str = "python worker",
    ):
        self._server = server
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._capacity = capacity
        self._name = name
        self._kinds: Dict[str, _Kind] = {}
        self._jobs: Dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.served = 0

    def kind(self, name: str, *, max_attempts: int = 3, lease_seconds: int = 10):
        """Registers the decorated function as the handler of `name`."""

        def register(handler: Callable) -> Callable:
            self._kinds[name] = _Kind(name, handler, max_attempts, lease_seconds)
            return handler

        return register

    def stop(self) -> None:
        """Stops taking work; `run` returns once the jobs under way end."""
        self._stop.set()

    def run(
        self, max_operations: Optional[int] = None, on_ready: Optional[Callable] = None
    ) -> None:
        """Serves until `stop` (or `max_operations` jobs have ended)."""
        channel = grpc.insecure_channel(self._server)
        stub = workers_pb2_grpc.WorkersStub(channel)
        outgoing: queue.Queue = queue.Queue()
        outgoing.put(
            workers_pb2.LeaseRequest(
                subscribe=workers_pb2.Subscribe(
                    kinds=[
                        workers_pb2.KindDeclaration(
                            name=k.name,
                            max_attempts=k.max_attempts,
                            lease_duration=duration_pb2.Duration(seconds=k.lease_seconds),
                        )
                        for k in self._kinds.values()
                    ],
                    capacity=self._capacity,
                    worker_name=self._name,
                )
            )
        )

        def requests():
            while True:
                item = outgoing.get()
                if item is None:
                    return
                yield item

        stream = stub.Lease(requests(), metadata=self._metadata)
        stream.initial_metadata()
        if on_ready is not None:
            on_ready()
        pool = ThreadPoolExecutor(max_workers=self._capacity)
        started = 0
        stopper = threading.Thread(target=lambda: (self._stop.wait(), stream.cancel()), daemon=True)
        stopper.start()
        try:
            for m in stream:
                if m.HasField("assignment"):
                    a = m.assignment
                    job = Job(a.name, a.attempt, a.kind, a.tenant, a.payload, a.traceparent)
                    with self._lock:
                        self._jobs[a.name] = job
                    started += 1
                    pool.submit(self._serve, stub, a, job)
                    if max_operations is not None and started >= max_operations:
                        break
                elif m.HasField("cancellation"):
                    with self._lock:
                        job = self._jobs.get(m.cancellation.name)
                    if job is not None:
                        job._cancel.set()
        except grpc.RpcError:
            if not self._stop.is_set():
                raise
        finally:
            pool.shutdown(wait=True)
            outgoing.put(None)
            channel.close()

    def _serve(self, stub, a, job: Job) -> None:
        kind = self._kinds[a.kind]
        ids = dict(name=a.name, attempt=a.attempt, lease_token=a.lease_token)
        beating = threading.Event()

        def heartbeat():
            while not beating.wait(kind.lease_seconds / 3):
                percent, status = job._progress
                try:
                    answer = stub.Heartbeat(
                        workers_pb2.HeartbeatRequest(
                            progress_percent=percent, status_message=status, **ids
                        ),
                        metadata=self._metadata,
                    )
                    if answer.cancel_requested:
                        job._cancel.set()
                except grpc.RpcError:
                    # The lease is gone (another attempt owns it): stop.
                    job._cancel.set()
                    return

        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        try:
            result = kind.handler(job)
            if job.cancelled and result is None:
                self._fail(stub, ids, _CANCELLED, "cancelled", retryable=False)
            else:
                response = any_pb2.Any()
                response.Pack(result if result is not None else any_pb2.Any())
                stub.Complete(
                    workers_pb2.CompleteRequest(response=response, **ids), metadata=self._metadata
                )
        except Retry as e:
            self._fail(stub, ids, _UNKNOWN, str(e) or "retry", retryable=True)
        except Failure as e:
            self._fail(stub, ids, e.code, str(e), retryable=False)
        except Exception as e:  # a handler's failure ends its attempt
            self._fail(stub, ids, _UNKNOWN, f"{type(e).__name__}: {e}", retryable=False)
        finally:
            beating.set()
            with self._lock:
                self._jobs.pop(a.name, None)
                self.served += 1

    def _fail(self, stub, ids, code: int, text: str, retryable: bool) -> None:
        try:
            stub.Fail(
                workers_pb2.FailRequest(
                    error=status_pb2.Status(code=code, message=text), retryable=retryable, **ids
                ),
                metadata=self._metadata,
            )
        except grpc.RpcError:
            pass  # a stale attempt: someone else owns the operation now
