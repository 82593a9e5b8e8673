"""A typed client for longrun: create work, then wait for it, watch it,
cancel it or come back to it by name.

    from longrun_client import Client

    client = Client("127.0.0.1:50051")
    op = client.sleep(2.0)
    print(op.result(timeout=30))
"""

from ._client import Client, LongrunError, Operation, OperationFailed
from .aio import AsyncClient, AsyncOperation

__all__ = [
    "AsyncClient",
    "AsyncOperation",
    "Client",
    "LongrunError",
    "Operation",
    "OperationFailed",
]
__version__ = "0.1.0"
