"""Chat templates rendered with a time bound, their failures as one-line errors.

A chat template is Jinja code that comes with a model folder. Transformers renders it in
Jinja's sandbox, which stops attribute tricks but not work: two nested ``range(100000)``
loops run for hours. :func:`apply_chat_template` renders through the tokenizer as usual
while a trace function watches the template's own frames (compiled Jinja code, file name
``<template>``) and stops it past :data:`TEMPLATE_SECONDS`; whatever the template raises
(the sandbox's ``SecurityError``, its own ``raise_exception``, a type error) becomes a
:class:`~lens.errors.PromptError` naming the template.
"""

from __future__ import annotations

import sys
import time

from lens.errors import PromptError

TEMPLATE_SECONDS = 5.0  # rendering one chat prompt takes milliseconds
_TEMPLATE_FILE = "<template>"  # what Jinja names the code it compiles from a string


class _TemplateTimeout(Exception):
    pass


def apply_chat_template(tokenizer, messages: list[dict], *, model: str, **kwargs) -> str:
    """``tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)``, bounded in time.

    Raises :class:`PromptError` when the template takes longer than :data:`TEMPLATE_SECONDS`
    or fails in any way.
    """
    seconds = TEMPLATE_SECONDS
    deadline = time.monotonic() + seconds

    def in_template(frame, event, arg):
        if time.monotonic() > deadline:
            raise _TemplateTimeout
        return in_template

    def on_call(frame, event, arg):  # every Python call while rendering (filters, tests, macros)
        if time.monotonic() > deadline:
            raise _TemplateTimeout
        return in_template if frame.f_code.co_filename == _TEMPLATE_FILE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except _TemplateTimeout:
        raise PromptError(f"the chat template of {model} ran longer than {seconds:g} s and was stopped: check its "
                          "loops (chat_template in tokenizer_config.json or chat_template.jinja)") from None
    except PromptError:
        raise
    except Exception as err:  # noqa: BLE001 - the template is the model folder's code: anything it raises is its fault
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise PromptError(f"the chat template of {model} failed: {type(err).__name__}"
                          + (f": {first}" if first else "")) from None
    finally:
        sys.settrace(previous)
    if not isinstance(text, str):
        raise PromptError(f"the chat template of {model} rendered {type(text).__name__}, not text")
    return text
