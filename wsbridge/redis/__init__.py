"""Redis Streams: a feed carried across processes and machines (the ``redis`` extra).

`store` (`RedisStreamStore`, written by a client's dispatcher thread), `consumer`
(`StreamConsumer`, a consumer group's member, run on the caller's thread or its own),
`bridge` (`Bridge`: a client that appends its feed to a stream, with failover),
`lease` (one holder of a feed at a time, renewed on its own thread), and `conn`
(loading redis-py and connecting, shared by all of them). Imported on first use by
``wsbridge.RedisStreamStore`` and its siblings, so the core runs without redis-py.
"""
