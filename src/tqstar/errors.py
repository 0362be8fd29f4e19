"""The exceptions tqstar raises.

Every error a user can act on is one sentence that names the offending value and the fix. Two branches say whose
move it is — the caller's input (a server answers 4xx) or what tqstar runs (5xx)::

    TQStarError
    ├── ClientError                            the input is wrong; the caller can fix it (HTTP 4xx)
    │   ├── ConfigError    (also a ValueError)  a parameter or spec is invalid; raised before models load;
    │   │                                       ``param`` names it and ``value`` holds what was given
    │   └── PromptTooLongError (also a ValueError) a prompt does not fit the model's context
    └── ServerError                            what tqstar runs failed (HTTP 5xx)
        ├── ModelLoadError                     a model path/id cannot be loaded, or two models do not fit
        │   └── VocabularyMismatchError        vocabularies differ where they must agree (bridge=False; a server)
        ├── RewardError                        a reward returned NaN/inf, or the wrong number of values
        └── ModelServerError                   a model server is unreachable, timed out or answered unusably
            └── ServerRejectedError            the server refused a request (4xx other than 429)

Internal invariants are plain ``assert`` statements, never these classes.
"""

from __future__ import annotations


class TQStarError(Exception):
    """Base class of every error tqstar raises on purpose."""


class ClientError(TQStarError):
    """The input is wrong (a parameter, a spec, a prompt): the caller can fix it. A server answers 4xx."""


class ServerError(TQStarError):
    """What tqstar runs failed (a model, a reward, a model server): the input may be fine. A server answers 5xx."""


class ConfigError(ClientError, ValueError):
    """A parameter, method name or spec is invalid.

    ``param``: the parameter the message is about (a :class:`~tqstar.params.DecodeParams` field, a config key such
    as ``limits.max_k``), when there is one; ``value``: the value that was given. A server names the request field
    from ``param`` (:mod:`tqstar.serving.completions`).
    """

    def __init__(self, message: str, *, param: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.param = param
        self.value = value


class PromptTooLongError(ClientError, ValueError):
    """A prompt plus the generation budget exceeds a model's context window."""


class ModelLoadError(ServerError):
    """A model or tokenizer could not be loaded, or loaded models do not fit together."""


class VocabularyMismatchError(ModelLoadError):
    """The SFT and baseline models do not share a vocabulary."""


class RewardError(ServerError):
    """A reward returned a value that cannot be used (NaN, inf, or the wrong count)."""


class ModelServerError(ServerError):
    """A model server (OpenAI-compatible endpoint) could not be reached or gave an unusable answer."""


class ServerRejectedError(ModelServerError):
    """The server answered a request with a client error (HTTP 4xx other than 429): retrying will not help.

    Attributes: ``status`` (the HTTP status) and ``detail`` (the server's message).
    """

    def __init__(self, message: str, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def preview(text: str, width: int = 60) -> str:
    """``text`` on one line, cut to ``width`` characters, quoted: for naming a text in a message."""
    text = text.replace("\n", " ")
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def require_type(value: object, expected: type | tuple[type, ...], name: str, what: str, fix: str,
                 error: type[TQStarError] = ConfigError) -> None:
    """Raise ``error`` reading "`name` must be <what>, got <value>; <fix>" unless ``value`` is an ``expected``."""
    if not isinstance(value, expected):
        message = f"`{name}` must be {what}, got {describe(value)}; {fix}"
        raise error(message, param=name, value=value) if issubclass(error, ConfigError) else error(message)


def describe(value: object) -> str:
    """A short, one-line description of ``value`` for a message: ``'text'``, ``5``, ``function f``, ``dict {...}``."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return preview(value) if isinstance(value, str) else repr(value)
    if callable(value) and hasattr(value, "__qualname__"):
        kind = "class" if isinstance(value, type) else "function"
        return f"{kind} {value.__qualname__}"
    text = repr(value).replace("\n", " ")
    text = text if len(text) <= 60 else text[:57] + "..."
    return text if isinstance(value, (list, tuple, dict, set)) else f"{type(value).__name__} {text}"
