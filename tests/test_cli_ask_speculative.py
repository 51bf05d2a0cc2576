"""`swarmlm ask --speculative / --draft-model / --server-loop`: the combinations that cannot work are refused in one
line before anything is dialed (drafts are made on this machine)."""

from __future__ import annotations

import pytest

from swarmlm.node.front import cli

PEER = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"


@pytest.mark.parametrize("args, says", [
    (["--http", "127.0.0.1:9", "--speculative"], "use --bootstrap, not --http"),
    (["--bootstrap", PEER, "--speculative", "--mode", "consensus"], "need --mode pipeline"),
    (["--bootstrap", PEER, "--draft-model", "builtin:tiny", "--ee-key", "k.json"], "use --speculative"),
    (["--bootstrap", PEER, "--server-loop"], "add --check-fraction 0"),
    (["--bootstrap", PEER, "--server-loop", "--check-fraction", "0.1"], "add --check-fraction 0"),
    (["--http", "127.0.0.1:9", "--server-loop", "--check-fraction", "0"], "use --bootstrap"),
    (["--bootstrap", PEER, "--server-loop", "--check-fraction", "0", "--ee-key", "k.json"], "does not run with --ee-key"),
])
def test_impossible_combinations_are_one_line(capsys, args, says):
    assert cli.main(["ask", "hello", *args]) != 0
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
