"""The leak check: test items whose request (normalised) occurs in the training pool, and those whose gold calls the
test item's own judge accepts too — on a tiny pool and test set written here with known overlaps."""
from __future__ import annotations

from toolace_r import io as rio
from toolace_r.data.schema import Sample, calls_to_truth
from toolace_r.leaks import check_leaks, format_leaks, normalize, request_text

TOOLS = [
    {"name": "get_weather", "description": "Weather in a city.",
     "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "get_time", "description": "Local time in a city.",
     "parameters": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
]


def _sample(sid: str, text: str, calls: list[tuple[str, str]], category: str = "") -> Sample:
    truth = calls_to_truth([{"name": n, "arguments": {"city": c}} for n, c in calls])
    return Sample(id=sid, tools=TOOLS, messages=[{"role": "user", "content": text}], truth=truth, category=category)


# test items, and the pool: which overlap how is known by construction
TEST = [
    _sample("t1", "What is the weather in Paris?", [("get_weather", "Paris")]),
    _sample("t2", "Weather in Oslo and Rome?", [("get_weather", "Oslo"), ("get_weather", "Rome")]),
    _sample("t3", "Time in Lima?", [("get_time", "Lima")]),
    _sample("t4", "Tell me a joke.", []),
    _sample("t5", "Weather in Berlin?", [("get_weather", "Berlin")]),
]
POOL = [
    # same request after normalisation (case, punctuation, spaces); "paris" passes the checker's string rule
    _sample("p1", "  what is the WEATHER in paris ", [("get_weather", "paris")]),
    # same parallel calls in the other order: the checker matches parallel calls in any order
    _sample("p2", "weather in oslo and rome", [("get_weather", "Rome"), ("get_weather", "Oslo")]),
    # same request, another function: request only
    _sample("p3", "Time in Lima", [("get_weather", "Lima")]),
    # no call on both sides
    _sample("p4", "tell me a joke", []),
    _sample("p5", "Weather in Munich?", [("get_weather", "Munich")]),
]


def test_normalize_says_what_it_does():
    assert normalize("What's the  Weather,\tin PARIS?!") == "what s the weather in paris"
    assert normalize("Ｐａｒｉｓ") == "paris"  # NFKC: full-width letters
    assert normalize("¿Qué tiempo hace?") == "qué tiempo hace"


def test_counts_on_a_pool_with_known_overlaps():
    report = check_leaks({"mine": {"simple": TEST}}, POOL)
    s = report["sets"]["mine"]
    assert report["pool_size"] == 5
    assert (s["n"], s["same_request"], s["same_request_and_calls"]) == (5, 4, 3)
    examples = {e["test"]: (e["pool"], e["same_calls"]) for e in s["examples"]}
    assert examples == {"t1": ("p1", True), "t2": ("p2", True), "t3": ("p3", False), "t4": ("p4", True)}
    text = format_leaks(report)
    assert "mine" in text and "4 (80.0%)" in text and "3 (60.0%)" in text and "WARNING" in text


def test_a_wrong_value_is_a_request_leak_only_and_a_clean_pool_says_so():
    pool = [_sample("q1", "What is the weather in Paris?", [("get_weather", "London")])]
    s = check_leaks({"x": {"simple": TEST[:1]}}, pool)["sets"]["x"]
    assert (s["same_request"], s["same_request_and_calls"]) == (1, 0)
    clean = check_leaks({"x": {"simple": TEST}}, [POOL[-1]])
    assert clean["sets"]["x"]["same_request"] == 0
    assert "no test item occurs in the pool" in format_leaks(clean)


def test_only_user_turns_make_the_request():
    a = Sample(id="a", tools=TOOLS, truth=[], messages=[
        {"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Which city?"}, {"role": "user", "content": "Paris"}])
    b = Sample(id="b", tools=TOOLS, truth=[], messages=[
        {"role": "user", "content": "weather"}, {"role": "assistant", "content": "where?"},
        {"role": "user", "content": "paris"}])
    assert request_text(a) == request_text(b) == "weather paris"


def test_an_acebench_item_meets_a_pool_item_with_the_same_user_turn(shared_data):
    from toolace_r.calls import parse_calls
    from toolace_r.data.acebench import load_acebench
    from toolace_r.data.prompts import render_answer

    groups = load_acebench(str(shared_data / "acebench" / "data_en") + ":normal_atom_bool")
    item = groups["normal_atom_bool"][0]
    lines = item.messages[-1]["content"].split("\n")[1:]  # after the reader's header: user: / system: lines
    assert lines[0].startswith("user:") and any(ln.startswith("system:") for ln in lines)
    turns = [{"role": "user" if ln.startswith("user:") else "assistant", "content": ln.split(":", 1)[1].strip()}
             for ln in lines if ln.strip()]
    calls = parse_calls(item.scoring["gold"])
    pool_item = Sample(id="pool-1", tools=item.tools, truth=calls_to_truth(calls), messages=turns)
    assert item.verdict(render_answer(pool_item.gold_calls())).valid
    s = check_leaks({"acebench": groups}, [pool_item])["sets"]["acebench"]
    assert (s["same_request"], s["same_request_and_calls"]) == (1, 1)


def test_eval_with_pool_reports_the_leaks_first_and_in_metrics(tmp_path, capsys):
    from toolace_r.cli import main

    rio.write_samples(tmp_path / "test.jsonl", TEST)
    rio.write_samples(tmp_path / "pool.jsonl", POOL)
    rc = main(["eval", "--model", "oracle:gold", "--data", str(tmp_path / "test.jsonl"), "--out", str(tmp_path / "o"),
               "--pool", str(tmp_path / "pool.jsonl"), "eval.num_actors=0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.index("Leak check") < out.index("category")  # before the figures
    leaks = rio.read_json(tmp_path / "o" / "metrics.json")["leaks"]
    assert leaks["pool"] == str(tmp_path / "pool.jsonl")
    assert (leaks["sets"]["test"]["same_request"], leaks["sets"]["test"]["same_request_and_calls"]) == (4, 3)


def test_bare_pool_flag_uses_the_jobs_pool_and_keeps_overrides():
    from toolace_r.cli import parse_args

    args = parse_args(["eval", "--model", "m", "--data", "builtin", "--pool", "eval.limit=5"])
    assert args.pool == "config" and args.overrides == ["eval.limit=5"]
    args = parse_args(["eval", "--model", "m", "--pool", "p.jsonl", "--data", "builtin", "eval.limit=5"])
    assert args.pool == "p.jsonl" and args.data == ["builtin"] and args.overrides == ["eval.limit=5"]
