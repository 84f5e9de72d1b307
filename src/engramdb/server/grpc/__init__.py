"""gRPC server: ``engramdb.v1.EngramDB`` over the service layer (see docs/grpc.md).

``start_grpc_server(service, settings)`` serves it; ``convert`` holds the
message ⇄ contract-dict conversions; ``engramdb_pb2``/``engramdb_pb2_grpc`` are
generated from proto/engramdb/v1/engramdb.proto by ``make proto``.
"""

from __future__ import annotations

from .server import GrpcServerHandle, start_grpc_server

__all__ = ["GrpcServerHandle", "start_grpc_server"]
