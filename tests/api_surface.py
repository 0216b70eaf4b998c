"""The async surface of a class of the trio API: what must be awaited, entered with
``async with`` or iterated with ``async for``. The guard test and the mirror tests of
``eidetica.blocking`` and ``eidetica.aio`` walk it, so neither can fall behind a method
added later."""

from __future__ import annotations

import inspect
import typing
from typing import Any, Literal

Kind = Literal["call", "context", "iterator"]


def _returns(method: Any) -> Any:
    try:
        hints = typing.get_type_hints(method)
    except NameError:  # a name imported for types only: no verdict from the annotation
        return None
    returned = hints.get("return")
    return typing.get_origin(returned) or returned


def async_surface(cls: type) -> dict[str, Kind]:
    """Each public method of ``cls`` that is async in any of the three ways, by name."""
    found: dict[str, Kind] = {}
    for name, method in vars(cls).items():
        if name.startswith("_") or not inspect.isfunction(method):
            continue
        if inspect.iscoroutinefunction(method):
            found[name] = "call"
        elif inspect.isasyncgenfunction(method):
            found[name] = "iterator"
        elif inspect.isasyncgenfunction(getattr(method, "__wrapped__", None)):
            found[name] = "context"  # an @asynccontextmanager
        else:
            returned = _returns(method)
            if hasattr(returned, "__anext__"):
                found[name] = "iterator"
            elif hasattr(returned, "__aenter__"):
                found[name] = "context"
    return found


def parameters(method: Any) -> list[str]:
    """The names of a method's parameters after ``self``."""
    return list(inspect.signature(method).parameters)[1:]


def named_parameters(method: Any) -> list[str]:
    """The names of a method's parameters after ``self``, without ``*args``/``**kw``."""
    variadic = {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}
    return [
        name
        for name, parameter in list(inspect.signature(method).parameters.items())[1:]
        if parameter.kind not in variadic
    ]
