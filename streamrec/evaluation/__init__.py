"""Prequential (test-then-train) evaluation of the online models, behind ``streamrec evaluate``.

* ``streams`` reads a recorded stream (our JSONL events, MovieLens or a ratings CSV) into
  time-ordered steps, each with its implicit feedback and whether it is a tested positive;
* ``protocol`` replays the steps through the models exactly as the worker learns them,
  ranking before learning on the tested part;
* ``metrics`` turns each tested event's rank into recall@k, NDCG@k, MRR, coverage and
  novelty;
* ``report`` writes ``report.json``, ``report.png`` and the stdout table.
"""
