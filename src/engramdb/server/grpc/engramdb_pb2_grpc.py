"""The generated stub and servicer base, under their former name (see :mod:`engramdb.grpc_codec.engramdb_pb2_grpc`)."""

from engramdb.grpc_codec.engramdb_pb2_grpc import *  # noqa: F403
