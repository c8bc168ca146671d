"""Placeholder rendering until the full parser/renderer lands (issue 3). Signatures are the contract."""
from __future__ import annotations

from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_value(str(k))}: {_value(x)}" for k, x in v.items()) + "}"
    return _value(str(v))


def render_python(calls: list[dict[str, Any]]) -> str:
    """[{"name", "arguments"}] → `[f(a=1), g(b="x")]`."""
    return "[" + ", ".join(f"{c['name']}(" + ", ".join(f"{k}={_value(v)}" for k, v in c["arguments"].items()) + ")" for c in calls) + "]"
