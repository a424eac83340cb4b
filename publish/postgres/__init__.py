"""The PostgreSQL store of the `postgres` consumer: table, rows, shard leases, writes, reads.

`rows` is pure (candle JSON <-> COPY text); `schema` creates and checks the table; `leases` is
the consumer's stream reader (which shards this replica writes, from which position); `writer`
commits rows and positions in one transaction; `history` reads a series back as candle JSON.
"""
