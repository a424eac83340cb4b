"""`python -m bench.aggregate_nostore`: `python -m aggregate` with the history store's calls taken
out of its write scripts (the write's, and the deadline's store after it). Only the bench's
control for what the store costs the candle delay (bench/history.py runs trials with and without
it); never for use: nothing would be stored."""

from __future__ import annotations

import sys

from aggregate import checkpoint
from aggregate.__main__ import main
from common import history

STORE_CALL = "store_candle(KEYS[4 + n], candle, depth)"
STORE_AFTER_CALL = "store_candle(KEYS[2 + n], candle, depth)"

if __name__ == "__main__":
    assert STORE_CALL in checkpoint.WRITE_LUA, "the store's call in the write script changed"
    assert STORE_AFTER_CALL in history.STORE_AFTER_LUA, "the store-after script changed"
    checkpoint.WRITE_LUA = checkpoint.WRITE_LUA.replace(STORE_CALL, "")
    history.STORE_AFTER_LUA = history.STORE_AFTER_LUA.replace(STORE_AFTER_CALL, "")
    sys.exit(main(sys.argv[1:]))
