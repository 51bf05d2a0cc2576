"""The echo RPC every host answers (``/swarmlm/echo/1``): keep-alive pings, RTT probes and tests.

Only small arguments are echoed: a peer must not make us encode, and hold until it reads it, a
header of a million values it sent.
"""

from __future__ import annotations

from typing import Any

from swarmlm.net.rpc import BAD_REQUEST, RpcError

ECHO_PROTOCOL = "/swarmlm/echo/1"
ECHO_MAX_VALUES = 4096


def small(value: Any, budget: int) -> bool:
    """Whether ``value`` holds at most ``budget`` values (stops counting there)."""
    stack, seen = [value], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > budget:
            return False
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


async def echo(ctx: Any, args: Any) -> Any:
    """Answers its argument (keep-alive pings, tests) -- a small one only: echoing a header of a
    million values would make us encode, and hold until the peer reads it, what it sent."""
    if not small(args, ECHO_MAX_VALUES):
        raise RpcError(BAD_REQUEST, f"echo takes at most {ECHO_MAX_VALUES} values")
    return args

