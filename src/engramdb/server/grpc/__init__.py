"""gRPC server: ``engramdb.v1.EngramDB`` over the service layer (see docs/grpc.md).

``start_grpc_server(service, settings)`` serves it; ``convert`` holds the
message ⇄ contract-dict conversions. The messages generated from
proto/engramdb/v1/engramdb.proto by ``make proto`` live in
:mod:`engramdb.grpc_codec`, which the Python clients use too.
"""

from __future__ import annotations

import os

# Index snapshots are written by forked children that never call gRPC; with
# fork support on, gRPC's fork handlers run on each one and log to stderr.
# Read once, when grpc is first imported; an operator's own setting wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from engramdb.server.grpc.server import GrpcServerHandle, start_grpc_server

__all__ = ["GrpcServerHandle", "start_grpc_server"]
