"""The asyncio client: the same calls as `Client`, awaited.

from longrun_client.aio import AsyncClient

async with AsyncClient("127.0.0.1:50051") as client:
    op = await client.sleep(2.0)
    response = await op.result(timeout=30)
    async for state in op.watch():
        ...
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Optional

import grpc

from . import _client
from ._client import LongrunError
from google.longrunning import operations_pb2, operations_pb2_grpc  # noqa: E402
from google.protobuf import message  # noqa: E402
from longrun.v1 import (  # noqa: E402
    batches_pb2,
    batches_pb2_grpc,
    diagnostics_pb2_grpc,
    reports_pb2_grpc,
    watch_pb2,
    watch_pb2_grpc,
    workers_pb2_grpc,
)


async def _call(fn, request, metadata):
    for attempt in range(_client._ATTEMPTS):
        try:
            return await fn(request, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < _client._ATTEMPTS:
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            raise LongrunError.of_rpc(e) from None
    raise AssertionError("unreachable")


class AsyncOperation(_client._Handle):
    """An operation, followed with asyncio."""

    def __init__(self, client: "AsyncClient", proto: operations_pb2.Operation):
        self._client = client
        self._set(proto)

    async def refresh(self) -> "AsyncOperation":
        request = operations_pb2.GetOperationRequest(name=self.name)
        self._set(
            await _call(self._client._operations.GetOperation, request, self._client._metadata)
        )
        return self

    async def result(self, timeout: Optional[float] = None, response_type=None):
        """As `Operation.result`, awaited."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self.done:
            request = self._wait_request(deadline, timeout, loop.time())
            self._set(
                await _call(self._client._operations.WaitOperation, request, self._client._metadata)
            )
        return self._outcome(response_type)

    async def watch(self) -> AsyncIterator["AsyncOperation"]:
        """Its states as they change, ending with the final one."""
        request = watch_pb2.WatchOperationRequest(name=self.name)
        try:
            async for proto in self._client._watcher.WatchOperation(
                request, metadata=self._client._metadata
            ):
                self._set(proto)
                yield self
        except grpc.aio.AioRpcError as e:
            raise LongrunError.of_rpc(e) from None

    async def cancel(self) -> None:
        request = operations_pb2.CancelOperationRequest(name=self.name)
        await _call(self._client._operations.CancelOperation, request, self._client._metadata)


class AsyncClient:
    """As `Client`, for asyncio."""

    def __init__(self, server: str = "127.0.0.1:50051", *, token: Optional[str] = None, tls=False):
        if tls:
            credentials = (
                tls if isinstance(tls, grpc.ChannelCredentials) else grpc.ssl_channel_credentials()
            )
            self._channel = grpc.aio.secure_channel(server, credentials)
        else:
            self._channel = grpc.aio.insecure_channel(server)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._operations = operations_pb2_grpc.OperationsStub(self._channel)
        self._watcher = watch_pb2_grpc.OperationWatcherStub(self._channel)
        self._diagnostics = diagnostics_pb2_grpc.DiagnosticsStub(self._channel)
        self._jobs = workers_pb2_grpc.JobsStub(self._channel)
        self._reports = reports_pb2_grpc.ReportServiceStub(self._channel)
        self._bulk = batches_pb2_grpc.BulkStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_) -> None:
        await self.close()

    async def sleep(self, seconds: float, *, steps: int = 1, fail_code: int = 0) -> AsyncOperation:
        request = _client._sleep_request(seconds, steps, fail_code, None)
        return AsyncOperation(self, await _call(self._diagnostics.Sleep, request, self._metadata))

    async def enqueue(
        self, kind: str, payload: message.Message, *, request_id: Optional[str] = None
    ) -> AsyncOperation:
        """Creates an operation of an outside kind."""
        request = _client._enqueue_request(kind, payload, request_id)
        return AsyncOperation(self, await _call(self._jobs.Enqueue, request, self._metadata))

    async def operation(self, name: str) -> AsyncOperation:
        """Comes back to an operation by name."""
        request = operations_pb2.GetOperationRequest(name=name)
        return AsyncOperation(
            self, await _call(self._operations.GetOperation, request, self._metadata)
        )

    async def create_report(
        self, month: str, format: str = "CSV", *, request_id: Optional[str] = None
    ) -> AsyncOperation:
        """Renders the month (YYYY-MM) as CSV, JSON or PDF."""
        request = _client._report_request(month, format, request_id)
        return AsyncOperation(
            self, await _call(self._reports.CreateReport, request, self._metadata)
        )

    async def retry(self, name: str) -> AsyncOperation:
        """Puts a failed or cancelled operation back in the queue."""
        request = batches_pb2.RetryOperationRequest(name=name)
        return AsyncOperation(self, await _call(self._bulk.RetryOperation, request, self._metadata))

    async def list(self, filter: str = "", page_size: int = 100) -> AsyncIterator[AsyncOperation]:
        """Every operation the filter matches, newest first, page by page."""
        token = ""
        while True:
            request = _client._list_request(filter, page_size, token)
            page = await _call(self._operations.ListOperations, request, self._metadata)
            for proto in page.operations:
                yield AsyncOperation(self, proto)
            token = page.next_page_token
            if not token:
                return
