"""How a model's layers are cut into shards: ``split_layers(n, k) -> [(start, end), ...]``.

``k`` contiguous, near-even ranges covering ``[0, n)``. Used by the generation loop
(``generate.load_chain``), the registry's size report (``registry.model_info``), benches and tests.
"""

from __future__ import annotations


def split_layers(n: int, k: int) -> list[tuple[int, int]]:
    if not 1 <= k <= n:
        raise ValueError(f"cannot split {n} layers into {k} shards")
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]
