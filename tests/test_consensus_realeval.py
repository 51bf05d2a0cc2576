"""The real-answer evaluation harness: scoring with scripted nodes, and the bench end to end on builtin:tiny."""

from __future__ import annotations

import contextlib
import io
import json

from swarmlm.consensus.evalset import load_questions
from swarmlm.consensus.judging import LogLikelihoodJudge
from swarmlm.consensus.realeval import run_eval

QS = [q for q in load_questions() if q.id in ("capital-00", "arith-000", "fact-00")]
RIGHT = {"capital-00": "Paris.", "arith-000": "5", "fact-00": "8"}
WRONG = {"capital-00": "Rome.", "arith-000": "6", "fact-00": "6"}


def test_scores_every_aggregator_against_the_labels():
    def answer(q):  # node0 always right; node1, node2 agree on the wrong answer; node3 loops
        loop = "yes no " * 20
        return [(RIGHT[q.id], False), (WRONG[q.id], False), (WRONG[q.id], False), (loop, False)]

    knows = LogLikelihoodJudge(lambda p, a: 1.0 if a in RIGHT.values() else (-5.0 if "yes no" in a else 0.0),
                               margin=0.0)
    res = run_eval(QS, answer, [knows] * 4).summary()
    assert res["questions"] == 3 and res["per_node_acc"] == [1.0, 0.0, 0.0, 0.0]
    assert res["best_single_node_acc"] == 1.0
    assert res["majority_acc"] == 0.0  # the wrong answer is the most common one
    assert res["bt_acc"] == 1.0 and res["bt_rep_acc"] == 1.0  # judges that recognise it pick the right one
    assert res["degenerate_winner_share"] == 0.0 and res["screened_candidates"] == {"repetition": 3}
    assert res["screened_but_right"] == 0


def test_a_loop_the_judges_love_never_wins():
    loop = "Paris Paris Paris Paris " * 10

    def answer(q):
        return [(loop, False), (WRONG[q.id], False), (RIGHT[q.id], False)]

    loves_loops = LogLikelihoodJudge(lambda p, a: float(len(a)), margin=0.0)
    res = run_eval(QS, answer, [loves_loops] * 3).summary()
    assert res["degenerate_winner_share"] == 0.0


def test_the_real_bench_runs_on_the_tiny_model():
    from swarmlm.bench.consensus import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["--real", "--json", "--model", "builtin:tiny", "--limit", "4", "--nodes", "3", "--max-tokens", "4"])
    assert rc == 0
    r = json.loads(buf.getvalue())
    assert r["questions"] == 4 and r["nodes"] == 3 and len(r["per_node_acc"]) == 3
    for key in ("best_single_node_acc", "majority_acc", "bt_acc", "bt_rep_acc", "degenerate_winner_share"):
        assert 0.0 <= r[key] <= 1.0
    assert r["degenerate_winner_share"] == 0.0 and r["reputation"] == "audits"


def test_the_real_bench_runs_a_swarm_of_two_models(tmp_path):
    """Node i runs the (i mod 2)-th model: two backends, each judging with its own model."""
    import shutil

    from swarmlm.bench.consensus import main
    from swarmlm.models.registry import resolve

    other = tmp_path / "tiny-copy"
    shutil.copytree(resolve("builtin:tiny"), other)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["--real", "--json", "--models", f"builtin:tiny,{other}", "--limit", "3", "--nodes", "3",
                   "--max-tokens", "4"])
    assert rc == 0
    r = json.loads(buf.getvalue())
    assert r["node_models"] == ["builtin:tiny", str(other), "builtin:tiny"] and r["questions"] == 3
    assert r["degenerate_winner_share"] == 0.0


def test_audits_convict_lying_judges_in_the_real_harness():
    def answer(q):  # node0 right, the others wrong (node1 and node2 agree)
        return [(RIGHT[q.id], False), (WRONG[q.id], False), (WRONG[q.id], False), ("I am not sure.", False)]

    knows = LogLikelihoodJudge(lambda p, a: 1.0 if a in RIGHT.values() else 0.0, margin=0.0)
    lies = LogLikelihoodJudge(lambda p, a: 0.0 if a in RIGHT.values() else 1.0, margin=0.0)
    judges = [knows, lies, lies, knows]
    qs = QS * 2
    agree = run_eval(qs, answer, judges, reputation="consensus").summary()
    audited = run_eval(qs, answer, judges, reputation="audits", audit_every=1).summary()
    assert agree["bt_acc"] == audited["bt_acc"] == 0.0  # same votes, same unweighted fit: the liars tie it
    assert agree["bt_rep_acc"] == 0.0  # agreement rewards whoever forms the consensus
    # every question is an audit: after the first one the liars weigh 0.01, the honest judges 0.1
    outcomes = run_eval(qs, answer, judges, reputation="audits", audit_every=1).outcomes
    assert [o.bt_rep for o in outcomes] == [False] + [True] * 5 and audited["bt_rep_acc"] == round(5 / 6, 4)
