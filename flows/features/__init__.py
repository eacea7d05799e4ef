"""Feature set version 1: one aggregation implementation for stream, backfill and training.

- :mod:`flows.features.definitions`: the ``user`` and ``product`` views, dtypes, defaults.
- :mod:`flows.features.tiles`: :class:`EntityTiles`, an entity's tiled counts over event time.
- :mod:`flows.features.codec`: the versioned binary value stored per entity.
- :mod:`flows.features.online`: the Redis online store (pipelined writes, one-MGET reads).
- :mod:`flows.features.cli`: ``tributary features get``.

Nothing is re-exported here, so importing one module does not pull in Redis.
"""
