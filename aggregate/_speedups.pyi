from collections.abc import Sequence

def summarize(
    prices: Sequence[int], sizes: Sequence[int], buys: Sequence[bool]
) -> tuple[int, int, int, int, int]: ...
