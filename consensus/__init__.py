"""swarmlm.consensus: pure logic of consensus rounds (no sockets, no clock, no torch).

Modules, bottom up:

* ``bt``          weighted Bradley-Terry fit (MM + Newton), ``aggregate`` over candidate ids
* ``pairs``       seeded assignment of ~3N ordered pairs per judge, never its own answer
* ``records``     signed records (spec, candidate, commit, reveal, round record), ``Packet``, commit hash
* ``audit``       checks of candidates, reveals and whole round records (``verify_record``)
* ``round``       the coordinator's I/O-free state machine: packets and times in, actions out
* ``participant`` the answering node's and the judge's side (``answer_packet``, ``JudgeSession``)
* ``judging``     the ``Judge`` protocol, ``LogLikelihoodJudge``, ``PromptJudge``
* ``pairwise``    ``PairwiseJudge`` (choice letters, both orders, batched), ``ScreenedJudge``
* ``screens``     deterministic degenerate-answer screens (empty, repetition, language, cut off)
* ``reputation``  reputation, weights, stake and slashing as a pure fold over round records
* ``calibration`` generated puzzles, grading, signed calibration records
* ``local``       an in-memory driver of a whole round; ``scenario`` scripted histories for tests
* ``sim``         the seeded simulation behind ``swarmlm bench consensus``
* ``simhard``     the harder simulation (correlated judges, adaptive colluders), means over seeds
* ``evalset``, ``evalgen``, ``realeval``  the shipped labeled questions and the real-answer harness

See docs/CONSENSUS.md for the mechanism and its limits.
"""
