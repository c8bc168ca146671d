"""`toolace-r check --input CASES.jsonl [--output VERDICTS.jsonl] [--decoder lenient|bfcl]`

Each input line: `{"id"?, "category", "functions": [schemas], "output": "<raw model text>" | [calls],
"ground_truth": [BFCL possible-answer list]}`. Each output line, same order: `{"id", "valid", "error_type",
"reason"}`. When input lines carry a reference `"valid"`, the agreement with it is printed last:
`agreement: 0.9987 (2996/3000)`, and the disagreeing ids are logged.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from typing import Any, Iterator, TextIO

from toolace_r.calls.checker import check
from toolace_r.errors import DataError

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("category", "functions", "output", "ground_truth")


def read_cases(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, case) for each non-empty line; a DataError names the file, line and field of a bad one."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot open cases file: {err}", path=path) from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                case = json.loads(line)
            except ValueError as err:
                raise DataError(f"line {lineno} is not JSON: {err}", path=path, index=lineno) from None
            if not isinstance(case, dict):
                raise DataError(f"line {lineno} is not a JSON object", path=path, index=lineno)
            for field in REQUIRED_FIELDS:
                if field not in case:
                    raise DataError(f"line {lineno} has no {field!r}", path=path, index=lineno, field=field)
            if not isinstance(case["functions"], list):
                raise DataError("must be a list of function schemas", path=path, index=lineno, field="functions")
            if not isinstance(case["ground_truth"], list):
                raise DataError("must be a BFCL possible-answer list", path=path, index=lineno, field="ground_truth")
            if not isinstance(case["output"], (str, list, dict)):
                raise DataError("must be model text or a list of calls", path=path, index=lineno, field="output")
            if "valid" in case and not isinstance(case["valid"], bool):
                raise DataError("must be true or false", path=path, index=lineno, field="valid")
            yield lineno, case


def check_command(args: Any, cfg: Any = None) -> int:
    decoder = getattr(args, "decoder", None) or "lenient"
    out: TextIO = open(args.output, "w", encoding="utf-8") if getattr(args, "output", None) else sys.stdout
    n = agree = labelled = 0
    errors: Counter[str] = Counter()
    disagreements: list[str] = []
    start = time.perf_counter()
    try:
        for lineno, case in read_cases(args.input):
            case_id = case.get("id", lineno)
            verdict = check(case["output"], case["functions"], case["ground_truth"], str(case["category"]), decoder)
            out.write(json.dumps({"id": case_id, **verdict.to_dict()}, ensure_ascii=False) + "\n")
            n += 1
            if not verdict.valid:
                errors[verdict.error_type] += 1
            if "valid" in case:
                labelled += 1
                if case["valid"] == verdict.valid:
                    agree += 1
                else:
                    disagreements.append(f"{case_id} (reference {case['valid']}, ours {verdict.valid}: "
                                         f"{verdict.error_type} {verdict.reason})")
    finally:
        if out is not sys.stdout:
            out.close()
    elapsed = time.perf_counter() - start
    n_valid = n - sum(errors.values())
    log.info("checked %d outputs with the %s decoder in %.2fs: %d valid, %d invalid", n, decoder, elapsed, n_valid,
             n - n_valid)
    for error_type, count in errors.most_common():
        log.info("  %-55s %d", error_type, count)
    for line in disagreements[:20]:
        log.warning("disagreement: %s", line)
    if labelled:
        print(f"agreement: {agree / labelled:.4f} ({agree}/{labelled})")
    return 0
