"""Degenerate-answer screens, and a round where a loop the judges like still cannot win."""

from __future__ import annotations

from swarmlm.consensus.audit import verify_record
from swarmlm.consensus.judging import LogLikelihoodJudge
from swarmlm.consensus.local import run_local_round
from swarmlm.consensus.records import ConsensusError, RoundRecord
from swarmlm.consensus.round import Finished
from swarmlm.consensus.screens import SCREENED_PREFIX, finish_tag, screen, was_cut_off
from swarmlm.crypto.identity import Identity

Q = "What is the capital of France?"
LOOP = "La femme, le femme, le femme. " * 12 + "Paris"


def test_each_screen_and_the_answers_that_pass():
    assert screen(Q, "") == "empty" and screen(Q, " ... \n") == "empty"
    assert screen(Q, LOOP) == "repetition"
    assert screen(Q, "ha" * 60) == "repetition"  # a loop without spaces
    assert screen(Q, "La capitale de la France est Paris, et elle est très belle.") == "language"
    assert screen(Q, "Столица Франции это Париж") == "language"
    assert screen(Q, "The capital of France is Paris and it is a big", cut_off=True) == "cut off"
    assert screen(Q, "The capital of France is Paris. It is a big", cut_off=True) == ""  # a whole sentence
    for ok in ("Paris", "The capital of France is Paris.", "8", "No.",
               "Paris is the capital of France; it lies on the Seine and is home to the Louvre and the Eiffel Tower."):
        assert screen(Q, ok) == "", ok
    assert screen(Q, "The capital of France is Paris.", cut_off=True) == ""  # ended a sentence anyway
    assert screen("Quelle est la capitale de la France ?", "La capitale de la France est Paris.") == ""
    assert was_cut_off("temperature=0.7" + finish_tag("length")) and not was_cut_off("t=0" + finish_tag("stop"))


def test_a_loop_the_judges_prefer_never_wins_while_a_clean_answer_exists():
    coord = Identity.from_seed(b"\xc1" * 32)
    nodes = [Identity.from_seed(bytes([40 + i]) * 32) for i in range(4)]
    answers = dict(zip(nodes, [LOOP, "The capital of France is Paris.", "Paris", "Lyon"]))
    # judges that, like log-likelihood, love the loop: scored only by length
    judges = {n: LogLikelihoodJudge(lambda p, a: float(len(a)), margin=0.0) for n in nodes}
    rnd, log = run_local_round(coord, Q, answers, judges, {n.peer_id: 1.0 for n in nodes}, now=10.0)
    done = next(a for a in log if isinstance(a, Finished))
    assert done.winner_answer != LOOP
    assert (nodes[0].peer_id, SCREENED_PREFIX + "repetition") in done.record.dropped
    verify_record(done.record)
    # honest judges sort the loop below every clean answer before the model is asked
    loop_id = next(c for c, a in done.answers.items() if a == LOOP)
    assert min(done.record.strengths, key=done.record.strengths.get) == loop_id
    # a record that names a screened candidate as its winner does not pass the audit
    forged = RoundRecord(**{**done.record.__dict__, "winner": loop_id})
    try:
        verify_record(forged)
    except ConsensusError:
        pass
    else:
        raise AssertionError("a screened winner passed the audit")
    # a screened candidate still judges (it is not dropped as a judge)
    assert nodes[0].peer_id in done.record.weights
