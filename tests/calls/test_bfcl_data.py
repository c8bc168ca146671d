"""The checker against every BFCL v3 record that has an answer file: ground truth passes, perturbations fail with
the error type BFCL's rules give. Runs over all records, not a sample (a few seconds)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolace_r.calls import check, gold_calls, render_json, render_python, standardize_string
from toolace_r.data.prompts import NO_CALL_ANSWER

ANSWERED = ["simple", "multiple", "parallel", "parallel_multiple", "java", "javascript"]
PYTHON_CATEGORIES = ["simple", "multiple", "parallel", "parallel_multiple"]

# Records whose own data the official checker rejects: even the intended answer cannot pass.
DATA_QUIRKS = {
    "simple_363": "truth names 'find_closest' but the only schema is 'restaurant_search.find_closest'",
    "javascript_41": "truth names 'queue' but the only schema is 'queue_1'",
    "java_36": "ArrayList<String> param whose truth list holds an int and a bool (nested type check fails)",
    "java_65": "ArrayList<String> param whose truth list holds bools (nested type check fails)",
    "java_64": "dict truth lists a bare string instead of a list of acceptable values (compared per character)",
}


def _load(shared_data: Path, category: str) -> list[tuple[dict, list]]:
    base = shared_data / "bfcl_v3"
    questions = [json.loads(line) for line in (base / f"BFCL_v3_{category}.json").open()]
    answers = {}
    answer_file = base / "possible_answer" / f"BFCL_v3_{category}.json"
    if answer_file.exists():
        answers = {r["id"]: r["ground_truth"] for r in map(json.loads, answer_file.open())}
    return [(q, answers.get(q["id"], [])) for q in questions]


@pytest.fixture(scope="module")
def records(shared_data) -> dict[str, list[tuple[dict, list]]]:
    return {c: _load(shared_data, c) for c in ANSWERED + ["irrelevance"]}


def test_record_counts(records):
    counts = {c: len(r) for c, r in records.items()}
    assert counts == {"simple": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200, "java": 100,
                      "javascript": 50, "irrelevance": 240}


@pytest.mark.parametrize("category", ANSWERED)
def test_ground_truth_checks_valid(records, category):
    # BFCL decodes java/javascript answers with a Java/JS parser, not python syntax (`from=` is no python keyword
    # argument), so those two categories are judged with the lenient decoder only.
    decoders = ["lenient", "bfcl"] if category in PYTHON_CATEGORIES else ["lenient"]
    failures = []
    quirks_seen = []
    for question, truth in records[category]:
        calls = gold_calls(truth, question["function"])
        # python syntax with every decoder; JSON only with the lenient one (BFCL's prompt decoder reads python only)
        for text, text_decoders in ((render_python(calls), decoders), (render_json(calls), ["lenient"])):
            for decoder in text_decoders:
                verdict = check(text, question["function"], truth, category, decoder)
                if question["id"] in DATA_QUIRKS:
                    assert not verdict.valid, f"{question['id']} is listed as a data quirk but now passes"
                    quirks_seen.append(question["id"])
                elif not verdict.valid:
                    failures.append((question["id"], decoder, verdict.error_type, verdict.reason))
    assert not failures, failures[:10]
    expected_quirks = {q for q in DATA_QUIRKS if q.rsplit("_", 1)[0] == category}
    assert set(quirks_seen) == expected_quirks


def test_irrelevance_records(records):
    for question, truth in records["irrelevance"]:
        assert truth == []
        functions = question["function"]
        for decoder in ("lenient", "bfcl"):
            assert check(NO_CALL_ANSWER, functions, truth, "irrelevance", decoder).valid
            # a call with the first function's required params filled is a wrong answer here
            fn = functions[0]
            call = {"name": fn["name"], "arguments": {p: "x" for p in fn["parameters"].get("required", [])}}
            verdict = check(render_python([call]), functions, truth, "irrelevance", decoder)
            assert (verdict.valid, verdict.error_type) == (False, "irrelevance_error:decoder_success"), question["id"]


# ---------------------------------------------------------------------------------------------------------------
# perturbations
# ---------------------------------------------------------------------------------------------------------------
SIMPLE_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool}


def _plain_params(question: dict, call: dict, truth_entry: dict) -> list[tuple[str, str]]:
    """(param, schema type) of the call's params with a scalar schema type whose acceptable values all have that
    type (ints allowed for floats): the ones where a wrong value or type must show as value/type errors."""
    fn = next(f for f in question["function"] if f["name"] == call["name"])
    props = fn["parameters"]["properties"]
    acceptable_map = next(iter(truth_entry.values()))
    out = []
    for p in call["arguments"]:
        t = props.get(p, {}).get("type")
        if t not in SIMPLE_TYPES:
            continue
        allowed = [a for a in acceptable_map[p] if a != ""]
        want = (int, float) if t == "float" else SIMPLE_TYPES[t]
        if allowed and all(type(a) in (want if isinstance(want, tuple) else (want,)) for a in allowed):
            out.append((p, t))
    return out


def _wrong_value(value, t: str, allowed: list):
    if t == "string":
        new = value + " qq zz"
        assert standardize_string(new) not in {standardize_string(a) for a in allowed if isinstance(a, str)}
        return new, "value_error:string"
    if t == "boolean":
        return (None, None) if (not value) in allowed else ((not value), "value_error:others")
    new = value + (7 if t == "integer" else 7.25)
    while new in allowed:
        new += 7
    return new, "value_error:others"


def _wrong_type(value, t: str):
    return ({"string": 12345, "integer": str(value), "float": str(value), "boolean": str(value).lower()}[t],
            "type_error:simple")


def _expected(category: str, error_type: str) -> str:
    return "parallel_function_checker_no_order:cannot_find_match" if "parallel" in category else error_type


def _perturbations(question: dict, truth: list, category: str):
    """Yield (what, calls, expected error type) for each perturbation that applies to this record."""
    gold = gold_calls(truth, question["function"])
    for i, call in enumerate(gold):
        entry = truth[i]
        fn = next(f for f in question["function"] if f["name"] == call["name"])
        for p, t in _plain_params(question, call, entry):
            allowed = next(iter(entry.values()))[p]
            value, error = _wrong_value(call["arguments"][p], t, allowed)
            if error is not None:  # (a bool param that accepts both values has no wrong value)
                yield f"wrong value {p}", _replace_arg(gold, i, p, value), _expected(category, error)
            value, error = _wrong_type(call["arguments"][p], t)
            yield f"wrong type {p}", _replace_arg(gold, i, p, value), _expected(category, error)
        for p in fn["parameters"].get("required", []):
            if p in call["arguments"]:
                yield f"missing required {p}", _drop_arg(gold, i, p), _expected(
                    category, "simple_function_checker:missing_required")
        yield "unknown param", _replace_arg(gold, i, "zz_not_a_param", 1), _expected(
            category, "simple_function_checker:unexpected_param")
        yield "wrong function", _rename(gold, i, call["name"] + "_v2"), _expected(
            category, "simple_function_checker:wrong_func_name")
    missing = gold[1:]
    if "parallel" in category:
        yield "missing call", missing, "parallel_function_checker_no_order:wrong_count"
    elif "multiple" in category:
        yield "missing call", missing, "multiple_function_checker:wrong_count"
    else:
        yield "missing call", missing, "simple_function_checker:wrong_count"


def _replace_arg(calls, i, p, value):
    out = [dict(c, arguments=dict(c["arguments"])) for c in calls]
    out[i]["arguments"][p] = value
    return out


def _drop_arg(calls, i, p):
    out = [dict(c, arguments=dict(c["arguments"])) for c in calls]
    del out[i]["arguments"][p]
    return out


def _rename(calls, i, name):
    out = [dict(c) for c in calls]
    out[i]["name"] = name
    return out


@pytest.mark.parametrize("category", PYTHON_CATEGORIES)
def test_perturbations_check_invalid_with_the_right_error(records, category):
    failures, counts = [], {}
    for question, truth in records[category]:
        if question["id"] in DATA_QUIRKS:
            continue
        for what, calls, expected in _perturbations(question, truth, category):
            kind = what.split(" ")[0] + " " + what.split(" ")[1]
            counts[kind] = counts.get(kind, 0) + 1
            text = render_python(calls)
            for decoder in ("lenient", "bfcl"):
                want = expected
                if decoder == "bfcl" and not calls:  # BFCL cannot decode "[]": a decode failure, not a count
                    want = "ast_decoder:decoder_failed"
                verdict = check(text, question["function"], truth, category, decoder)
                if verdict.valid or verdict.error_type != want:
                    failures.append((question["id"], what, decoder, want, verdict))
    assert not failures, failures[:10]
    # every kind of perturbation was exercised on this category
    for kind in ("wrong value", "wrong type", "missing required", "unknown param", "wrong function", "missing call"):
        assert counts.get(kind, 0) > 0, (category, kind, counts)
