"""A longrun worker in Python, on the client library's Worker helper: it
serves the kind "text.reverse", whose payload is a
google.protobuf.StringValue, by reversing the text in steps with
progress, and completes with the reversed text.

    pip install -r requirements.txt ../../clients/python
    python worker.py --server 127.0.0.1:50051 [--token lr_...] [--max-operations N]

The helper holds the Workers.Lease stream, heartbeats each lease with
the latest progress, passes cancellation on (`job.cancelled`), and ends
each attempt: Complete with the returned message, Fail when the function
raises (`Retry` for a retryable failure, `Failure` with a code for a
final one).

Traces: each job carries its attempt's span as a W3C traceparent. With
OTEL_EXPORTER_OTLP_ENDPOINT set (OTEL_SERVICE_NAME names the service),
the work runs in a span of its own whose parent is that one, exported over
OTLP/gRPC, so the worker shows up in the operation's trace.
"""

import argparse
import contextlib
import os
import sys
import time

from google.protobuf import wrappers_pb2

from longrun_client.worker import Failure, Worker

KIND = "text.reverse"
INVALID_ARGUMENT = 3


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


def traced(spans, job):
    """A span for the work of `job`, a child of its attempt's span; nothing
    without a tracer."""
    if spans is None or not job.traceparent:
        return contextlib.nullcontext()
    from opentelemetry.trace.propagation.tracecontext import (
        TraceContextTextMapPropagator,
    )

    parent = TraceContextTextMapPropagator().extract({"traceparent": job.traceparent})
    return spans.start_as_current_span(
        f"{KIND} work",
        context=parent,
        attributes={"longrun.operation": job.name, "longrun.attempt": job.attempt},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--token", default=None)
    parser.add_argument("--max-operations", type=int, default=None)
    parser.add_argument("--lease-seconds", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    args = parser.parse_args()
    spans = tracer()
    worker = Worker(args.server, token=args.token, capacity=1, name="python example")

    @worker.kind(KIND, max_attempts=3, lease_seconds=args.lease_seconds)
    def reverse(job):
        print(f"{job.name} attempt {job.attempt}", flush=True)
        with traced(spans, job):
            text = job.unpack(wrappers_pb2.StringValue).value
            steps = 4
            for step in range(steps):
                if job.cancelled:
                    return None
                job.progress(step * 100 // steps, f"step {step + 1} of {steps}")
                time.sleep(args.step_seconds)
            if text == "fail":
                raise Failure(INVALID_ARGUMENT, "refusing to reverse 'fail'")
            return wrappers_pb2.StringValue(value=text[::-1])

    worker.run(
        max_operations=args.max_operations,
        on_ready=lambda: print(f"serving {KIND}", flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
