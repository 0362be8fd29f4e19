"""Evaluation: run methods over a prompt set (:mod:`~tqstar.eval.run`), the results file format
(:mod:`~tqstar.eval.results`), tables and plots (:mod:`~tqstar.eval.report`, :mod:`~tqstar.eval.frontier`,
:mod:`~tqstar.eval.metrics`, :mod:`~tqstar.eval.judge`), and the exact tabular testbed (:mod:`~tqstar.eval.testbed`)."""
