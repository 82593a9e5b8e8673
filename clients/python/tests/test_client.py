"""The client against a real server, which the test suite starts and
names in LONGRUN_SERVER (host:port)."""

import os
import sys

import pytest

from longrun_client import Client, LongrunError, OperationFailed

SERVER = os.environ.get("LONGRUN_SERVER", "127.0.0.1:50051")


@pytest.fixture
def client():
    with Client(SERVER) as c:
        yield c


def sleep_response():
    # The generated messages are importable once the client is.
    from longrun.v1 import diagnostics_pb2

    return diagnostics_pb2.SleepResponse


def test_a_result_is_waited_for_and_typed(client):
    op = client.sleep(0.2, steps=2)
    assert op.name.startswith("operations/")
    assert not op.done or op.state == "SUCCEEDED"
    response = op.result(timeout=30, response_type=sleep_response())
    assert response.steps == 2
    assert op.done and op.state == "SUCCEEDED" and op.progress_percent == 100


def test_a_failure_raises_with_its_status_and_reason(client):
    op = client.sleep(0, fail_code=9)
    with pytest.raises(OperationFailed) as failed:
        op.result(timeout=30)
    assert failed.value.code == 9
    assert failed.value.reason == "REQUESTED_FAILURE"
    assert failed.value.operation.state == "FAILED"


def test_an_operation_is_resumed_by_name_from_a_new_client(client):
    name = client.sleep(0.1).name
    with Client(SERVER) as again:
        op = again.operation(name)
        op.result(timeout=30)
        assert op.state == "SUCCEEDED"


def test_watch_follows_progress_to_the_end_and_cancel_stops_it(client):
    op = client.sleep(0.5, steps=5)
    seen = [o.progress_percent for o in op.watch()]
    assert seen == sorted(seen) and op.done and seen[-1] == 100
    long = client.sleep(600, steps=600)
    long.cancel()
    with pytest.raises(OperationFailed) as cancelled:
        long.result(timeout=30)
    assert cancelled.value.code == 1 and long.state == "CANCELLED"
    assert long.estimated_end_time is not None


def test_list_pages_through_every_match(client):
    names = {client.sleep(0).name for _ in range(5)}
    listed = {op.name for op in client.operations.list(page_size=2)}
    assert names <= listed


def test_a_bad_request_names_its_field(client):
    with pytest.raises(LongrunError) as refused:
        client.operation("not-a-name")
    assert refused.value.code == 3
    assert [v.field for v in refused.value.field_violations] == ["name"]


def test_a_request_id_makes_a_create_safe_to_repeat(client):
    first = client.sleep(0, request_id="6f1c2b0e-8a7d-4c1e-9f3a-2b5d7e9c1a41")
    again = client.sleep(0, request_id="6f1c2b0e-8a7d-4c1e-9f3a-2b5d7e9c1a41")
    assert first.name == again.name


def test_a_failed_operation_is_retried_as_its_next_attempt(client):
    op = client.sleep(0, fail_code=9)
    with pytest.raises(OperationFailed):
        op.result(timeout=30)
    retried = client.retry(op.name)
    assert retried.state == "QUEUED"
    with pytest.raises(OperationFailed):
        retried.result(timeout=30)
    assert retried.metadata.attempt == 2
    assert len(retried.metadata.failed_attempts) == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_an_orders_file_is_uploaded_with_progress_and_imported(client, tmp_path):
    csv = tmp_path / "orders.csv"
    rows = ["order_id,created_at,customer_id,status,amount_cents"]
    rows += [f"o{i},2024-06-0{1 + i % 9}T00:00:00Z,c{i},placed,{100 + i}" for i in range(50)]
    csv.write_text("\n".join(rows) + "\n")
    seen = []
    op = client.orders.import_file(
        str(csv), progress=lambda sent, total: seen.append((sent, total))
    )
    op.result(timeout=60)
    assert seen and seen[-1][0] == seen[-1][1] == csv.stat().st_size
    report = client.reports.create(month="2024-06", format="JSON")
    assert report.result(timeout=60).type_url.endswith("longrun.v1.Report")


def test_a_webhook_is_verified_and_a_forgery_refused():
    import base64
    import hashlib
    import hmac
    import time

    from longrun_client.webhooks import WebhookError, verify

    key = b"k" * 32
    secret = "whsec_" + base64.b64encode(key).decode()
    body = b'{"type": "operation.succeeded"}'
    stamp = str(int(time.time()))
    mac = hmac.new(key, f"msg_1.{stamp}.".encode() + body, hashlib.sha256).digest()
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": stamp,
        "Webhook-Signature": "v1," + base64.b64encode(mac).decode(),
    }
    assert verify(secret, headers, body) == {"type": "operation.succeeded"}
    with pytest.raises(WebhookError):
        verify(secret, headers, body + b" ")
    with pytest.raises(WebhookError):
        verify(secret, headers, body, now=time.time() + 3600)


def test_a_decorated_function_serves_a_kind_with_progress_and_retries(client):
    import threading

    from google.protobuf import wrappers_pb2

    from longrun_client.worker import Retry, Worker

    worker = Worker(SERVER, capacity=2)
    tries = {}

    @worker.kind("py.upper", max_attempts=3)
    def upper(job):
        text = job.unpack(wrappers_pb2.StringValue).value
        job.progress(50, "halfway")
        tries[text] = tries.get(text, 0) + 1
        if text == "flaky" and job.attempt == 1:
            raise Retry("not yet")
        if text == "boom":
            raise ValueError("it blew up")
        return wrappers_pb2.StringValue(value=text.upper())

    ready = threading.Event()
    serving = threading.Thread(target=worker.run, kwargs={"on_ready": ready.set}, daemon=True)
    serving.start()
    assert ready.wait(30)
    try:
        hello = client.jobs.enqueue("py.upper", wrappers_pb2.StringValue(value="hello"))
        assert hello.result(timeout=30, response_type=wrappers_pb2.StringValue).value == "HELLO"
        flaky = client.jobs.enqueue("py.upper", wrappers_pb2.StringValue(value="flaky"))
        assert flaky.result(timeout=60, response_type=wrappers_pb2.StringValue).value == "FLAKY"
        assert flaky.metadata.attempt == 2 and tries["flaky"] == 2
        boom = client.jobs.enqueue("py.upper", wrappers_pb2.StringValue(value="boom"))
        with pytest.raises(OperationFailed) as failed:
            boom.result(timeout=30)
        assert "it blew up" in failed.value.message
    finally:
        worker.stop()
        serving.join(30)


def test_the_asyncio_client_waits_and_watches():
    import asyncio

    from longrun_client.aio import AsyncClient

    async def main():
        async with AsyncClient(SERVER) as client:
            op = await client.sleep(0.3, steps=3)
            seen = [o.progress_percent async for o in op.watch()]
            assert seen == sorted(seen) and op.done
            again = await client.operation(op.name)
            assert (await again.result(timeout=30)).type_url.endswith("SleepResponse")
            failed = await client.sleep(0, fail_code=9)
            with pytest.raises(OperationFailed):
                await failed.result(timeout=30)
            retried = await client.retry(failed.name)
            assert retried.state == "QUEUED"
            names = [o.name async for o in client.list(page_size=2)]
            assert op.name in names and failed.name in names
            report = await client.create_report("2024-01", "JSON")
            assert (await report.result(timeout=60)).type_url.endswith("Report")

    asyncio.run(main())
