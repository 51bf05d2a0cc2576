"""A head that answers a speculative verify pass with the wrong number of tokens is a failed hop
(the generation fails over), never an exception the user meets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from swarmlm.node.client.session import HopFailed, HopPlan, StepResult
from swarmlm.node.client.speculative import Speculation


class FakeGen:
    def __init__(self) -> None:
        self.prompt_ids = [5, 6, 7, 5, 6, 7, 5, 6]  # prompt lookup drafts "7 5 6 ..."
        self.token_ids: list[int] = []
        self.verifier = None
        self.request = SimpleNamespace(params=SimpleNamespace(max_new_tokens=8))

    async def _take(self, res: StepResult) -> bool:
        self.token_ids.append(res.token)
        return True


class ShortHead:
    hops = [HopPlan("peer-first", 0, 3), HopPlan("peer-head", 3, 6)]
    last_step = 0

    async def step(self, x, pos, verify=False):
        return StepResult(None, None, [], tokens=[7])  # one token for a pass of several positions


async def test_a_verify_pass_with_the_wrong_token_count_fails_the_head():
    gen = FakeGen()
    with pytest.raises(HopFailed) as err:
        await Speculation(k_max=4).run(gen, ShortHead(), StepResult(7, None, []))
    assert err.value.peer == "peer-head" and "verify pass" in str(err.value)
