"""Tools for checking tqstar and its backends: the LM contract every backend must pass
(:mod:`~tqstar.testing.contract`), the naive reference decoder every speed claim is measured against
(:mod:`~tqstar.testing.reference`), and launchers for real vLLM and llama-server processes
(:mod:`~tqstar.testing.servers`)."""
