"""Builds longrun-client, generating its gRPC stubs from longrun's protos
(../../proto, or $LONGRUN_PROTO) into longrun_client/_gen as part of the
build: the generated code is never edited or checked in."""

import os
import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO = pathlib.Path(os.environ.get("LONGRUN_PROTO", HERE.parent.parent / "proto"))

# The services the client calls, and what they import from longrun's tree
# (the well-known types come with grpcio-tools).
FILES = [
    "google/longrunning/operations.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/api/client.proto",
    "google/api/field_behavior.proto",
    "google/api/launch_stage.proto",
    "longrun/v1/metadata.proto",
    "longrun/v1/watch.proto",
    "longrun/v1/diagnostics.proto",
    "longrun/v1/notification.proto",
    "longrun/v1/run.proto",
    "longrun/v1/workers.proto",
    "longrun/v1/batches.proto",
    "longrun/v1/reports.proto",
]


class BuildWithStubs(build_py):
    def run(self):
        import grpc_tools
        from grpc_tools import protoc

        out = pathlib.Path(self.build_lib) / "longrun_client" / "_gen"
        out.mkdir(parents=True, exist_ok=True)
        well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{PROTO}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *FILES,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on the protos in {PROTO}")
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
