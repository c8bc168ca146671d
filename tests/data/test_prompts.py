"""Prompt styles: the signature style lists every parameter with its type, marks optional ones, spells out enums and
nested objects, and is much shorter than the JSON styles on the built-in pool."""
from __future__ import annotations

from toolace_r.config import BuiltinPoolConfig
from toolace_r.data.pool import load_builtin
from toolace_r.data.prompts import chat_messages, system_prompt, tool_signature

ORDER = {
    "name": "place_order",
    "description": "Order a product.",
    "parameters": {
        "type": "dict",
        "properties": {
            "sku": {"type": "string", "description": "Product id"},
            "quantity": {"type": "integer"},
            "speed": {"type": "string", "enum": ["standard", "express"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {"type": "dict", "properties": {"street": {"type": "string"}, "zip": {"type": "string"}},
                        "required": ["street"]},
        },
        "required": ["sku", "quantity"],
    },
}


def test_signature_lists_types_optional_markers_enums_lists_and_objects():
    assert tool_signature(ORDER) == (
        "place_order(sku: string, quantity: integer, speed?: standard|express, tags?: list[string], "
        "address?: {street: string, zip?: string}) - Order a product.")


def test_signature_of_a_tool_without_parameters_or_description():
    assert tool_signature({"name": "ping"}) == "ping()"
    assert tool_signature({"name": "odd", "parameters": {"properties": {"x": "not a schema"}}}) == "odd(x?: any)"


def test_signature_prompt_names_every_tool_and_every_parameter_of_the_builtin_pool():
    train, _ = load_builtin(BuiltinPoolConfig(n_train=300, n_heldout=10))
    for sample in train:
        prompt = system_prompt(sample.tools, "signature")
        for tool in sample.tools:
            assert tool["name"] + "(" in prompt
            for param in tool["parameters"]["properties"]:
                assert f"{param}: " in prompt or f"{param}?: " in prompt
    signature = sum(len(system_prompt(s.tools, "signature")) for s in train)
    compact = sum(len(system_prompt(s.tools, "compact")) for s in train)
    assert signature < 0.6 * compact, (signature, compact)


def test_every_style_keeps_the_dialogue_after_the_system_prompt():
    messages = [{"role": "user", "content": "order 2 of SKU-1"}]
    for style in ("toolace", "compact", "signature"):
        chat = chat_messages([ORDER], messages, style)
        assert [m["role"] for m in chat] == ["system", "user"] and chat[1]["content"] == "order 2 of SKU-1"
        assert "place_order" in chat[0]["content"]
