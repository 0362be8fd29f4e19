"""Prompt formatting for every backend: a prompt (a str or chat messages) becomes the ids that start a response.

One module so the local backend (:mod:`tqstar.lm.hf`), the remote one (:mod:`tqstar.lm.remote`, which renders the
template locally when it has the tokenizer, or on the server) and the reward models format prompts the same way:

* :func:`chat_messages` — a str is one user turn; a message list is checked; a system prompt goes first.
* :func:`encode_with_tokenizer` — the tokenizer's chat template (or a given Jinja string), else the raw text;
  message contents are encoded as *text*, so a control token written in a prompt cannot open a chat turn
  (:func:`placeholders` and :func:`encode_around` render the template around placeholders for that).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence

from ..errors import ConfigError
from .base import ROLES, Ending, Prompt


def chat_messages(prompt: Prompt, system_prompt: str | None, name: str) -> list[dict[str, str]]:
    """``prompt`` as chat messages: a str is one user turn; a list is checked (``role`` one of :data:`ROLES`,
    ``content`` a str). ``system_prompt`` goes first unless the messages bring their own system message."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt) if isinstance(prompt, Sequence) else []
        if not messages or not all(isinstance(m, Mapping) and m.get("role") in ROLES
                                   and isinstance(m.get("content"), str) for m in messages):
            raise ConfigError(f"prompt {str(prompt)[:80]!r} for {name} must be a str or a non-empty list of"
                              " {'role': 'system'|'user'|'assistant', 'content': str} messages")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def template_options(messages: Sequence[Mapping[str, str]], ending: Ending = "auto") -> dict[str, bool]:
    """The chat template's ``add_generation_prompt`` / ``continue_final_message`` for ``ending`` (:data:`Ending`)."""
    if ending == "auto":
        ending = "continue" if messages[-1]["role"] == "assistant" else "assistant"
    if ending == "continue" and messages[-1]["role"] != "assistant":
        raise ConfigError(f"a prompt can only continue a final assistant message, but its last message is"
                          f" {messages[-1]['role']!r}; end it with the assistant's start or open a new turn")
    return {"add_generation_prompt": ending == "assistant", "continue_final_message": ending == "continue"}


def encode_with_tokenizer(tokenizer, prompt: Prompt, chat_template: bool | str, system_prompt: str | None,
                          name: str, parse_special_tokens: bool = False, ending: Ending = "auto") -> list[int]:
    """The ids that start a response to ``prompt`` (a str or chat messages, see :func:`chat_messages`): the
    tokenizer's chat template (or ``chat_template`` when it is a Jinja string) ended as ``ending`` says
    (:func:`template_options`), else the raw text of the messages (system prompt first, blank lines between).

    Message contents are encoded as *text*: a control token written in them (``<|im_end|>``, ``</s>``) becomes
    ordinary tokens, so a prompt cannot open chat turns or end the sequence; only the template's own markup is
    control tokens. Contents free of control-token strings encode exactly as the plain rendered text does.
    ``parse_special_tokens=True`` lets contents write control tokens (the tokenizer's default behaviour).
    """
    tok, template = tokenizer, chat_template
    messages = chat_messages(prompt, system_prompt, name)
    injected = not parse_special_tokens and has_control_tokens(tok, [m["content"] for m in messages])
    if template and (isinstance(template, str) or getattr(tok, "chat_template", None)):
        options = {"chat_template": template if isinstance(template, str) else None,
                   **template_options(messages, ending)}
        ids = encode_chat(tok, messages, options) if injected else flat_ids(
            tok.apply_chat_template(messages, tokenize=True, return_dict=False, **options))
    else:
        text = "\n\n".join(m["content"] for m in messages)
        ids = tok(text, add_special_tokens=True, split_special_tokens=injected)["input_ids"]
    if not ids:
        raise ConfigError(f"prompt {str(prompt)[:80]!r} encodes to no tokens for {name}; give a non-empty prompt")
    return list(ids)


def has_control_tokens(tokenizer, texts: Sequence[str]) -> bool:
    """Whether any text spells one of the tokenizer's special (control) tokens."""
    specials = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
    specials += list(tokenizer.all_special_tokens)
    return any(s and s in text for s in specials for text in texts)


def encode_chat(tokenizer, messages: list[dict[str, str]], options: dict) -> list[int]:
    """The chat template rendered around placeholders; the template's text is encoded with its control tokens,
    each message content with ``split_special_tokens=True`` (control-token strings become ordinary tokens)."""
    marks = placeholders(len(messages))
    shown = [{**m, "content": mark} for m, mark in zip(messages, marks)]
    rendered = tokenizer.apply_chat_template(shown, tokenize=False, **options)
    return encode_around(
        rendered, dict(zip(marks, (m["content"] for m in messages))),
        text=lambda t: tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"],
        markup=lambda t: tokenizer(t, add_special_tokens=False)["input_ids"])


def placeholders(count: int) -> list[str]:
    """``count`` distinct plain-word placeholders that no prompt will contain (a fresh random stem per call)."""
    stem = uuid.uuid4().hex
    return [f"TQSTAR{stem}X{i}X" for i in range(count)]


def encode_around(rendered: str, contents: Mapping[str, str], *, text: Callable[[str], list[int]],
                  markup: Callable[[str], list[int]]) -> list[int]:
    """Ids of ``rendered`` with each placeholder (a key of ``contents``) replaced by its content: contents are
    encoded by ``text`` (no control tokens), the template's markup between them by ``markup``."""
    ids: list[int] = []
    for i, piece in enumerate(re.split("(" + "|".join(map(re.escape, contents)) + ")", rendered)):
        if i % 2:
            ids += text(contents[piece])
        elif piece:
            ids += markup(piece)
    return ids


def flat_ids(ids) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return list(ids[0]) if ids and isinstance(ids[0], list) else list(ids)
