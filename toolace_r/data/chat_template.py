"""A chat template that renders OpenAI-style `tools` the way training rendered them, for serving engines.

Why: vLLM and SGLang build a model's prompt with `tokenizer.apply_chat_template(messages, tools=tools,
add_generation_prompt=True)`. The model dirs this project trains were trained on `prompts.render_prompt`: the tool
list inside a style-specific system prompt (prompts.SYSTEM_TEMPLATES), assistant calls written as `[f(a=1)]`, then the
base model's own template. A base template that renders tools its own way (Qwen's Hermes blocks), or one that ignores
them (tiny-base's), gives the trained model a prompt it never saw. `tool_chat_template(base, style)` wraps the base
template in a Jinja preamble that rebuilds exactly `prompts.chat_messages(tools, messages, style)` from OpenAI
messages and tools (the conversion `serve/convert.py` does), then hands `messages` = that chat and `tools` = none to
the unchanged base template. Token-for-token equality is tested for every style (tests/data/test_chat_template.py).

Our own code keeps rendering through the same template: `prompts.prompt_text` passes an already built chat (system
prompt first, no `tools`), which the preamble recognises by the style's fixed system-prompt opening and passes
through untouched, so writing this template into a model dir changes nothing the project renders for that dir.

Rendering rules mirrored from Python (kept in one place, here): `calls.syntax.py_value` for argument values (strings
double-quoted with \\ \" \\n \\r \\t and \\u00XX escapes; None/True/False; inf as 1e999; NaN as float("nan")),
`prompts.tool_signature` / `schema_type` for the signature style, `json.dumps(..., ensure_ascii=False,
separators=(",", ":"))` (transformers' `tojson` filter) for the JSON styles. Lone surrogate code points in argument
strings are not escaped (Jinja cannot test for them); JSON-decoded requests do not normally contain them.

Assistant `tool_calls` must carry `arguments` as an object, which is what transformers documents and what vLLM passes
(its chat_utils decodes OpenAI's JSON-string arguments before rendering); a JSON string is refused with an error.
"""
from __future__ import annotations

import json

from toolace_r.data.prompts import SYSTEM_TEMPLATES

# The first line of every template this module writes; what follows BASE_MARK is the base model's own template.
HEAD_MARK = "{#- toolace-r tool chat template"
# `{{ '' }}` ends the preamble: no tag with whitespace control or trim_blocks touches the base template's first char.
BASE_MARK = "{#- toolace-r: the base model's own chat template follows -#}{{ '' }}"

_MAX_FLOAT = "1.7976931348623157e308"  # above it (as a Jinja float literal) only +inf; below minus it only -inf
# py_value's string escapes, in the order they must apply (the backslash first: the others insert backslashes).
_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")] + [
    (chr(c), f"\\u{c:04x}") for c in [*range(0x20), 0x7F] if chr(c) not in "\n\r\t"
]


def _lit(text: str) -> str:
    """A Jinja string literal for `text` (Jinja decodes literals with Python's unicode-escape: JSON's escapes fit)."""
    return json.dumps(text, ensure_ascii=True)


def _escape_chain() -> str:
    return "".join(f"|replace({_lit(a)}, {_lit(b)})" for a, b in _ESCAPES)


def _macros() -> str:
    """Jinja macros: tr_value = calls.syntax.py_value, tr_calls = render_python, tr_type = prompts.schema_type,
    tr_signature = prompts.tool_signature. Everything is emitted through {{ }} so that whitespace control (the
    transformers environment sets trim_blocks and lstrip_blocks) cannot add or drop a character."""
    return (
        "{%- macro tr_str(s) -%}{{ '\"' ~ (s" + _escape_chain() + ") ~ '\"' }}{%- endmacro -%}\n"
        "{%- macro tr_value(v) -%}\n"
        "{%- if v is string -%}{{ tr_str(v) }}\n"
        "{%- elif v is none -%}{{ 'None' }}\n"
        "{%- elif v is boolean -%}{{ 'True' if v else 'False' }}\n"
        "{%- elif v is integer -%}{{ v|string }}\n"
        "{%- elif v is float -%}\n"
        "{%- if v != v -%}{{ 'float(\"nan\")' }}\n"
        "{%- elif v > " + _MAX_FLOAT + " -%}{{ '1e999' }}\n"
        "{%- elif v < -" + _MAX_FLOAT + " -%}{{ '-1e999' }}\n"
        "{%- else -%}{{ v|string }}{%- endif -%}\n"
        "{%- elif v is mapping -%}{{ '{' }}\n"
        "{%- for k in v -%}{%- if not loop.first -%}{{ ', ' }}{%- endif -%}"
        "{{ tr_value(k) }}{{ ': ' }}{{ tr_value(v[k]) }}{%- endfor -%}{{ '}' }}\n"
        "{%- elif v is iterable -%}{{ '[' }}{%- for x in v -%}{%- if not loop.first -%}{{ ', ' }}{%- endif -%}"
        "{{ tr_value(x) }}{%- endfor -%}{{ ']' }}\n"
        "{%- else -%}{{ tr_str(v|string) }}{%- endif -%}\n"
        "{%- endmacro -%}\n"
        "{%- macro tr_calls(calls) -%}{{ '[' }}{%- for c in calls -%}\n"
        "{%- set f = c['function'] if c is mapping and c.get('function') is mapping else c -%}\n"
        "{%- set args = f.get('arguments') or {} -%}\n"
        "{%- if args is string -%}{{ raise_exception('toolace-r chat template: assistant tool_calls[].function"
        ".arguments must be an object, not a JSON string (transformers and vLLM pass decoded arguments)') }}"
        "{%- endif -%}\n"
        "{%- if not loop.first -%}{{ ', ' }}{%- endif -%}{{ f.get('name') ~ '(' }}\n"
        "{%- for k in args -%}{%- if not loop.first -%}{{ ', ' }}{%- endif -%}{{ k ~ '=' }}{{ tr_value(args[k]) }}"
        "{%- endfor -%}{{ ')' }}\n"
        "{%- endfor -%}{{ ']' }}{%- endmacro -%}\n"
        "{%- macro tr_type(spec) -%}\n"
        "{%- if spec is not mapping -%}{{ 'any' }}\n"
        "{%- elif spec.get('enum') -%}{{ spec['enum']|map('string')|join('|') }}\n"
        "{%- else -%}{%- set kind = spec.get('type', 'any') -%}\n"
        "{%- if kind in ('array', 'tuple') -%}{{ 'list[' }}{{ tr_type(spec.get('items')) }}{{ ']' }}\n"
        "{%- elif kind in ('dict', 'object') and spec.get('properties') is mapping and spec['properties'] -%}\n"
        "{%- set needed = spec.get('required') or [] -%}{{ '{' }}\n"
        "{%- for k in spec['properties'] -%}{%- if not loop.first -%}{{ ', ' }}{%- endif -%}"
        "{{ k ~ ('' if k in needed else '?') ~ ': ' }}{{ tr_type(spec['properties'][k]) }}{%- endfor -%}{{ '}' }}\n"
        "{%- else -%}{{ kind|string }}{%- endif -%}{%- endif -%}\n"
        "{%- endmacro -%}\n"
        "{%- macro tr_signature(tool) -%}\n"
        "{%- set params = tool.get('parameters') or {} -%}{%- set required = params.get('required') or [] -%}\n"
        "{%- set props = params.get('properties') or {} -%}{{ tool.get('name', '') ~ '(' }}\n"
        "{%- for k in props -%}{%- if not loop.first -%}{{ ', ' }}{%- endif -%}"
        "{{ k ~ ('' if k in required else '?') ~ ': ' }}{{ tr_type(props[k]) }}{%- endfor -%}{{ ')' }}\n"
        "{%- set description = (tool.get('description') or '')|string|trim -%}\n"
        "{%- if description -%}{{ ' - ' ~ description }}{%- endif -%}\n"
        "{%- endmacro -%}\n"
    )


def preamble(style: str) -> str:
    """The Jinja that turns (messages, tools) into prompts.chat_messages' output for `style`, then sets `messages` to
    it and `tools` to none for the base template that follows."""
    if style not in SYSTEM_TEMPLATES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {sorted(SYSTEM_TEMPLATES)}")
    template = SYSTEM_TEMPLATES[style]
    if template.count("{tools}") != 1:
        raise ValueError(f"prompt style {style!r}: its system template must hold {{tools}} exactly once")
    head, tail = template.split("{tools}")
    if style == "signature":
        listing = ("{%- for t in ns.tools -%}{%- if not loop.first -%}{%- set ns.listing = ns.listing ~ '\\n' -%}"
                   "{%- endif -%}{%- set ns.listing = ns.listing ~ tr_signature(t) -%}{%- endfor -%}\n")
    else:
        listing = "{%- set ns.listing = ns.tools|tojson(separators=(',', ':')) -%}\n"
    return (
        f"{HEAD_MARK} (prompt style {style}): written by toolace_r/data/chat_template.py. It renders OpenAI-style\n"
        "     tools and tool calls exactly as the model was trained on them; calls are python syntax [f(a=1)]. -#}\n"
        + _macros()
        + "{%- set ns = namespace(tools=[], listing='', system='', chat=[]) -%}\n"
        # Our own code's path: an already built chat (system prompt first, no tools) passes through unchanged.
        "{%- if tools is none and messages and messages[0]['role'] == 'system' and messages[0]['content'] is string"
        f" and messages[0]['content'].startswith({_lit(head)}) -%}}\n"
        "{%- set ns.chat = messages -%}\n"
        "{%- else -%}\n"
        # tools → serve.convert.convert_tools: {name, description, parameters}, OpenAI's wrapper optional
        "{%- for t in tools or [] -%}{%- set f = t['function'] if t.get('function') is mapping else t -%}\n"
        "{%- set ns.tools = ns.tools + [{'name': f.get('name'), 'description': f.get('description') or '',"
        " 'parameters': f.get('parameters') if f.get('parameters') is not none"
        " else {'type': 'object', 'properties': {}}}] -%}\n"
        "{%- endfor -%}\n"
        + listing
        + f"{{%- set ns.system = {_lit(head)} ~ ns.listing ~ {_lit(tail)} -%}}\n"
        # messages → prompts.chat_messages (developer = system, as serve.convert maps it)
        "{%- for m in messages -%}\n"
        "{%- set role = m.get('role', 'user') -%}{%- set role = 'system' if role == 'developer' else role -%}\n"
        "{%- set content = m.get('content') -%}\n"
        "{%- if content is none -%}{%- set content = '' -%}\n"
        "{%- elif content is not string -%}{%- set content = content|selectattr('text', 'defined')"
        "|map(attribute='text')|join('') -%}{%- endif -%}\n"
        "{%- if role == 'system' -%}\n"
        "{%- if content -%}{%- set ns.system = ns.system ~ '\\n' ~ content -%}{%- endif -%}\n"
        "{%- else -%}\n"
        "{%- if role == 'assistant' and m.get('tool_calls') -%}{%- set content = tr_calls(m['tool_calls']) -%}"
        "{%- endif -%}\n"
        "{%- set ns.chat = ns.chat + [{'role': role, 'content': content}] -%}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- set ns.chat = [{'role': 'system', 'content': ns.system}] + ns.chat -%}\n"
        "{%- endif -%}\n"
        "{%- set messages = ns.chat -%}\n"
        "{%- set tools = none -%}\n"
        + BASE_MARK
    )


def base_template(template: str) -> str:
    """The base model's own template inside a template this module wrote (else the template itself)."""
    if template.startswith(HEAD_MARK) and BASE_MARK in template:
        return template.split(BASE_MARK, 1)[1]
    return template


def tool_chat_template(template: str, style: str) -> str:
    """`template` (a base model's chat template, or one this module already wrapped) wrapped for `style`."""
    return preamble(style) + base_template(template)
