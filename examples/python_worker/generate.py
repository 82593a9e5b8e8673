"""Generates the Python stubs of longrun's protos into ./gen, with
grpcio-tools' bundled protoc (no system protoc). Run it once after
installing requirements.txt; worker.py runs it itself when ./gen is missing.
"""

import pathlib
import sys

from grpc_tools import protoc
import grpc_tools

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
OUT = HERE / "gen"

# workers.proto and everything it imports from longrun's tree; the
# well-known types come with grpcio-tools.
FILES = [
    "longrun/v1/workers.proto",
    "longrun/v1/notification.proto",
    "longrun/v1/run.proto",
    "longrun/v1/metadata.proto",
    "google/longrunning/operations.proto",
    "google/rpc/status.proto",
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/api/client.proto",
    "google/api/field_behavior.proto",
    "google/api/launch_stage.proto",
]


def generate() -> None:
    OUT.mkdir(exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        *FILES,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    # No __init__.py files: the generated google/ directory must merge
    # with the installed google.protobuf as a namespace package.


if __name__ == "__main__":
    generate()
