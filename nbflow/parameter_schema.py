"""A flow's parameters as a JSON schema (Prefect's ``flow.parameters``).

Each parameter is a property titled by its name, with its ``position`` in the
signature, its default (when JSON can hold it) and the schema of its type
hint; models it names are ``definitions``. ``*args`` is an array and
``**kwargs`` an object, both defaulting to empty.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

import pydantic


class ParameterSchema(pydantic.BaseModel):
    """The JSON schema of a flow's parameters."""

    title: Literal["Parameters"] = "Parameters"
    type: Literal["object"] = "object"
    properties: dict[str, Any] = pydantic.Field(default_factory=dict)
    required: list[str] = pydantic.Field(default_factory=list)
    definitions: dict[str, Any] = pydantic.Field(default_factory=dict)


def parameter_schema(fn: Callable[..., Any]) -> ParameterSchema:
    """The schema of ``fn``'s parameters, as Prefect makes it for a flow's."""
    signature = inspect.signature(fn)
    fields: dict[str, Any] = {}
    for position, (name, parameter) in enumerate(signature.parameters.items()):
        hint = _hint(fn, parameter.annotation)
        default = parameter.default
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            hint, default = list[hint], []  # type: ignore[valid-type]
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            hint, default = dict[str, hint], {}  # type: ignore[valid-type]
        field = pydantic.Field(... if default is inspect.Parameter.empty else default, title=name,
                               json_schema_extra={"position": position})
        fields[name] = (hint, field)
    model = pydantic.create_model("Parameters", __config__=pydantic.ConfigDict(arbitrary_types_allowed=True),
                                  **fields)
    schema = model.model_json_schema(ref_template="#/definitions/{model}")
    return ParameterSchema(properties=schema.get("properties", {}), required=schema.get("required", []),
                           definitions=schema.get("$defs", {}))


def _hint(fn: Callable[..., Any], annotation: Any) -> Any:
    """The type a parameter's annotation names (a string one evaluated where ``fn`` was defined); Any if none or
    if it does not evaluate (a name local to where the function was defined)."""
    if annotation is inspect.Parameter.empty:
        return Any
    if isinstance(annotation, str):
        try:
            return eval(annotation, getattr(inspect.unwrap(fn), "__globals__", {}))  # noqa: S307 - the code's own hint
        except Exception:  # noqa: BLE001
            return Any
    return annotation


__all__ = ["ParameterSchema", "parameter_schema"]
