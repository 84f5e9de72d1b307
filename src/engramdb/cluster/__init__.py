"""The cluster layer: etcd as the control plane, then shards and replicas.

It sits between the service and the engine: a coordinator maps requests to shard replicas, each an
ordinary engine collection. Embedded and single-node server mode do not import it. Nothing serves
through it yet.

The package imports nothing itself, so its pure modules (e.g. :mod:`engramdb.cluster.ring`) load
without the ``cluster`` extra; :mod:`engramdb.cluster.control` (the etcd client) needs it.
"""
