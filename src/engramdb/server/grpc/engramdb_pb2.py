"""The generated messages, under their former name: they live in :mod:`engramdb.grpc_codec.engramdb_pb2`.

Moved below the clients (which the layer order keeps from importing the server); this alias keeps
``from engramdb.server.grpc import engramdb_pb2`` working for code written against it.
"""

from engramdb.grpc_codec.engramdb_pb2 import *  # noqa: F403
from engramdb.grpc_codec.engramdb_pb2 import DESCRIPTOR as DESCRIPTOR
