"""A stand-in OTLP collector for bench/traces.sh: serves the collector's
trace service over gRPC on the port given, takes every export, counts the
spans, and writes the count to the file given when it is stopped (SIGTERM).

    python bench/otlp_sink.py PORT COUNT_FILE
"""

import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        n = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self.lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    port, out = sys.argv[1], sys.argv[2]
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    print("listening", flush=True)
    stopped.wait()
    server.stop(1)
    with open(out, "w") as f:
        f.write(str(sink.spans))


if __name__ == "__main__":
    main()
