"""A longrun worker in Python: serves the kind "text.reverse", whose payload
is a google.protobuf.StringValue, by reversing the text in steps, with
heartbeats that carry progress, and completing with the reversed text.

    pip install -r requirements.txt
    python worker.py --server 127.0.0.1:50051 [--token lr_...] [--max-operations N]

The protocol, in short:
  1. Open Workers.Lease and send Subscribe(kinds, capacity).
  2. Each Assignment names an operation, its attempt and a lease_token.
     While working, send Heartbeat(name, attempt, lease_token, progress)
     more often than the lease lasts; an answer with cancel_requested (or
     a Cancellation on the stream) means stop.
  3. End with Complete(name, attempt, lease_token, response) or
     Fail(name, attempt, lease_token, error, retryable). A call for an
     attempt that lost its lease gets FAILED_PRECONDITION (STALE_ATTEMPT):
     drop the work, it is someone else's now.

Traces: each Assignment carries the attempt's span as a W3C traceparent.
With OTEL_EXPORTER_OTLP_ENDPOINT set (OTEL_SERVICE_NAME names the
service), the work runs in a span of its own whose parent is that one,
exported over OTLP/gRPC, so the worker shows up in the operation's trace.
"""

import argparse
import contextlib
import os
import pathlib
import queue
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
STUB = HERE / "gen" / "longrun" / "v1" / "workers_pb2.py"
PROTOS = HERE.parent.parent / "proto" / "longrun" / "v1"
NEWEST = max(p.stat().st_mtime for p in PROTOS.glob("*.proto"))
if not STUB.exists() or STUB.stat().st_mtime < NEWEST:
    import generate

    generate.generate()
sys.path.insert(0, str(HERE / "gen"))

import grpc  # noqa: E402
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2  # noqa: E402
from google.rpc import status_pb2  # noqa: E402
from longrun.v1 import workers_pb2, workers_pb2_grpc  # noqa: E402

KIND = "text.reverse"
LEASE_SECONDS = 10


def tracer():
    """An OpenTelemetry tracer exporting to OTEL_EXPORTER_OTLP_ENDPOINT, or
    None when no collector is named."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME", "longrun-python-worker")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    # Exported as each span ends: a worker's spans are few and long.
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(insecure=True)))
    return provider.get_tracer("longrun.example")


def traced(tracer, assignment):
    """A span for the work of `assignment`, a child of its attempt's span;
    nothing without a tracer."""
    if tracer is None or not assignment.traceparent:
        return contextlib.nullcontext()
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": assignment.traceparent}
    if assignment.tracestate:
        carrier["tracestate"] = assignment.tracestate
    parent = TraceContextTextMapPropagator().extract(carrier)
    return tracer.start_as_current_span(
        f"{KIND} work",
        context=parent,
        attributes={"longrun.operation": assignment.name, "longrun.attempt": assignment.attempt},
    )


def requests(outgoing: "queue.Queue"):
    """The worker's side of the Lease stream: whatever is queued."""
    while True:
        message = outgoing.get()
        if message is None:
            return
        yield message


def fail(stub, assignment, code: int, message: str, metadata, retryable=False) -> None:
    """Ends the attempt with a google.rpc.Status of `code`."""
    stub.Fail(
        workers_pb2.FailRequest(
            name=assignment.name,
            attempt=assignment.attempt,
            lease_token=assignment.lease_token,
            error=status_pb2.Status(code=code, message=message),
            retryable=retryable,
        ),
        metadata=metadata,
    )


def reverse(stub, assignment, metadata) -> None:
    text = wrappers_pb2.StringValue()
    assignment.payload.Unpack(text)
    steps = 4
    for step in range(steps):
        answer = stub.Heartbeat(
            workers_pb2.HeartbeatRequest(
                name=assignment.name,
                attempt=assignment.attempt,
                lease_token=assignment.lease_token,
                progress_percent=step * 100 // steps,
                status_message=f"step {step + 1} of {steps}",
            ),
            metadata=metadata,
        )
        if answer.cancel_requested:
            fail(stub, assignment, 1, "cancelled", metadata)
            return
        time.sleep(0.05)
    if text.value == "fail":
        fail(stub, assignment, 3, "refusing to reverse 'fail'", metadata)
        return
    response = any_pb2.Any()
    response.Pack(wrappers_pb2.StringValue(value=text.value[::-1]))
    stub.Complete(
        workers_pb2.CompleteRequest(
            name=assignment.name,
            attempt=assignment.attempt,
            lease_token=assignment.lease_token,
            response=response,
        ),
        metadata=metadata,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--token", default=None)
    parser.add_argument("--max-operations", type=int, default=None)
    args = parser.parse_args()
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []

    channel = grpc.insecure_channel(args.server)
    stub = workers_pb2_grpc.WorkersStub(channel)
    outgoing: "queue.Queue" = queue.Queue()
    outgoing.put(
        workers_pb2.LeaseRequest(
            subscribe=workers_pb2.Subscribe(
                kinds=[
                    workers_pb2.KindDeclaration(
                        name=KIND,
                        max_attempts=3,
                        lease_duration=duration_pb2.Duration(seconds=LEASE_SECONDS),
                    )
                ],
                capacity=1,
                worker_name="python example",
            )
        )
    )
    stream = stub.Lease(requests(outgoing), metadata=metadata)
    # The server answers the stream's headers once the subscription (and
    # the kind's declaration) is accepted.
    stream.initial_metadata()
    print(f"serving {KIND}", flush=True)
    spans = tracer()
    done = 0
    try:
        for message in stream:
            if message.HasField("assignment"):
                a = message.assignment
                print(f"{a.name} attempt {a.attempt}", flush=True)
                with traced(spans, a):
                    reverse(stub, a, metadata)
                done += 1
                if args.max_operations is not None and done >= args.max_operations:
                    break
    finally:
        outgoing.put(None)
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
