"""`toolace-r check`: verdict lines in input order, the agreement line, clear errors for bad input, and the
agreement with BFCL's rules over cases built from every BFCL v3 python record."""
from __future__ import annotations

import json
import re

import pytest

from toolace_r.calls.cases import build_cases
from toolace_r.cli import main

FUNCTIONS = [{"name": "add", "parameters": {"type": "dict", "required": ["a", "b"],
                                            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}]
TRUTH = [{"add": {"a": [1], "b": [2]}}]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_check_writes_verdicts_in_order_and_prints_agreement(tmp_path, capsys):
    rows = [
        {"id": "ok", "category": "simple", "functions": FUNCTIONS, "output": "[add(a=1, b=2)]", "ground_truth": TRUTH,
         "valid": True},
        {"id": "plus", "category": "simple", "functions": FUNCTIONS, "output": "[add(a=+1, b=2)]",
         "ground_truth": TRUTH, "valid": False},
        {"category": "simple", "functions": FUNCTIONS, "output": [{"name": "add", "arguments": {"a": 1}}],
         "ground_truth": TRUTH, "valid": True},  # wrong reference: the checker must disagree here
        {"id": "irr", "category": "irrelevance", "functions": FUNCTIONS, "output": "No function fits.",
         "ground_truth": [], "valid": True},
    ]
    out = tmp_path / "verdicts.jsonl"
    assert main(["check", "--input", str(_write(tmp_path / "cases.jsonl", rows)), "--output", str(out),
                 "--decoder", "bfcl"]) == 0
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [v["id"] for v in verdicts] == ["ok", "plus", 3, "irr"]
    assert [v["valid"] for v in verdicts] == [True, False, False, True]
    assert verdicts[1]["error_type"] == "value_error:others"
    assert verdicts[2]["error_type"] == "simple_function_checker:missing_required"
    assert capsys.readouterr().out.strip().splitlines()[-1] == "agreement: 0.7500 (3/4)"


def test_lenient_is_the_default_decoder(tmp_path, capsys):
    rows = [{"id": 1, "category": "simple", "functions": FUNCTIONS, "output": "```python\n[add(a=1, b=2)]\n```",
             "ground_truth": TRUTH}]
    path = _write(tmp_path / "c.jsonl", rows)
    assert main(["check", "--input", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[0])["valid"] is True and not any(line.startswith("agreement") for line in lines)
    assert main(["check", "--input", str(path), "--decoder", "bfcl"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["error_type"] == "ast_decoder:decoder_failed"


@pytest.mark.parametrize("line,message", [
    ("not json", "line 2 is not JSON"),
    (json.dumps({"category": "simple", "functions": [], "output": "x"}), "line 2 has no 'ground_truth'"),
    (json.dumps({"category": "simple", "functions": {}, "output": "x", "ground_truth": []}), "'functions'"),
    (json.dumps({"category": "simple", "functions": [], "output": "x", "ground_truth": [], "valid": "yes"}), "'valid'"),
])
def test_bad_input_names_the_line_and_field(tmp_path, capsys, line, message):
    good = json.dumps({"category": "simple", "functions": FUNCTIONS, "output": "[add(a=1, b=2)]", "ground_truth": TRUTH})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    assert main(["check", "--input", str(path), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


def test_agreement_with_bfcl_rules_on_cases_from_every_record(shared_data, tmp_path, capsys):
    # 12 rule cases sampled per record (all ~48 000 take a minute on a busy 2-core machine; the rules are the same)
    cases = build_cases(shared_data / "bfcl_v3", limit_per_record=12, seed=0)
    assert len(cases) > 13_000 and {c["category"] for c in cases} == {
        "simple", "multiple", "parallel", "parallel_multiple", "irrelevance"}
    assert 0.2 < sum(c["valid"] for c in cases) / len(cases) < 0.5  # both verdicts well represented
    path = _write(tmp_path / "cases.jsonl", cases)
    assert main(["check", "--input", str(path), "--output", str(tmp_path / "v.jsonl"), "--decoder", "bfcl"]) == 0
    m = re.fullmatch(r"agreement: (\d\.\d{4}) \((\d+)/(\d+)\)", capsys.readouterr().out.strip().splitlines()[-1])
    assert m and int(m.group(3)) == len(cases)
    assert float(m.group(1)) >= 0.995, m.group(0)
