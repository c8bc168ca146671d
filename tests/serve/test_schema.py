"""The OpenAI request schema and the error contract (toolace_r.serve.schema): a wrong type is a 400 naming the field."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from toolace_r.serve.schema import validation_error

from .common import request


@pytest.mark.parametrize("fields, param", [
    ({"temperature": "hot"}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"max_refine_rounds": 0}, "max_refine_rounds"),
    ({"stream": "yes"}, "stream"),
])
def test_wrong_types_name_the_field(fields, param):
    with pytest.raises(ValidationError) as err:
        request(**fields)
    api = validation_error(err.value)
    assert api.status == 400 and api.param == param, api.message


