"""ACEBench's own scoring rules (toolace_r.calls.acebench), quirks included: each case states what ACEBench's
eval_main.py / model_eval/checker.py (@ e6db74b7) does with such an answer. Schemas and answers written here in
ACEBench's format."""
from __future__ import annotations

import pytest

from toolace_r.calls.acebench import check_acebench, decode

TRIP = {"name": "RoadTripAdvisor_planJourney", "description": "Plan a road trip.",
        "parameters": {"type": "object", "properties": {
            "departure_point": {"type": "string"}, "arrival_point": {"type": "string"},
            "stops": {"type": "integer"}, "scenic": {"type": "boolean"},
            "cities": {"type": "array", "items": {"type": "string"}},
            "window": {"type": "object", "properties": {"start": {"type": "string"}, "end": {"type": "string"}}},
            "legs": {"type": "array", "items": {"type": "object"}}},
            "required": ["departure_point"]}}
OTHER = {"name": "desktop_cpu_monitor", "description": "distractor", "arguments": {"type": "object", "properties": {
    "host": {"type": "string"}}}}
FUNCS = [OTHER, TRIP]


def _normal(output: str, answer, category: str = "normal_atom_bool", functions=FUNCS):
    return check_acebench(output, {"kind": "acebench", "category": category, "answer": answer,
                                   "functions": functions})


ANSWER = {"RoadTripAdvisor_planJourney": {"departure_point": "Los Angeles", "arrival_point": "San Francisco"}}


def test_exact_answer_passes_and_whitespace_is_removed_before_decoding():
    assert _normal('[RoadTripAdvisor_planJourney(departure_point="Los Angeles", arrival_point="San Francisco")]',
                   ANSWER).valid
    assert decode("[f(a='New York')]") == [{"f": {"a": "NewYork"}}]  # ACEBench squeezes spaces out of strings too


@pytest.mark.parametrize("output,error", [
    ('RoadTripAdvisor_planJourney(departure_point="LA")', "wrong_output_format"),  # no list brackets
    ('Sure! [RoadTripAdvisor_planJourney(departure_point="LA")]', "wrong_output_format"),  # prose
    ('[RoadTripAdvisor_planJourney(arrival_point="San Francisco")]', "lack_args"),  # required missing
    ('[RoadTripAdvisor_planJourney(departure_point="Los Angeles", arrival_point="San Francisco", mood="x")]',
     "addition_args"),
    ('[RoadTripAdvisor_planJourney(departure_point="Los Angeles", arrival_point="Sacramento")]', "value_error:string"),
    ('[desktop_cpu_monitor(host="a")]', "function_mismatch"),
    ('[RoadTripAdvisor_planJourney(departure_point="LA"), desktop_cpu_monitor(host="a")]', "wrong functions number"),
])
def test_failures_carry_acebench_error_types(output, error):
    verdict = _normal(output, ANSWER)
    assert not verdict.valid and verdict.error_type == error, verdict


def test_strings_match_by_normalised_substring():
    # ACEBench's string_checker: the normalised answer must be contained in the normalised output
    assert _normal('[RoadTripAdvisor_planJourney(departure_point="Los Angeles, CA", '
                   'arrival_point="downtown San-Francisco")]', ANSWER).valid


def test_numbers_and_booleans_are_type_checked_but_never_compared():
    answer = {"RoadTripAdvisor_planJourney": {"departure_point": "LA", "stops": 3, "scenic": True}}
    assert _normal('[RoadTripAdvisor_planJourney(departure_point="LA", stops=7, scenic=False)]', answer).valid
    wrong_type = _normal('[RoadTripAdvisor_planJourney(departure_point="LA", stops="3", scenic=True)]', answer)
    assert not wrong_type.valid and wrong_type.error_type == "type_error"


def test_lists_compare_in_order_and_dicts_by_contained_text():
    answer = {"RoadTripAdvisor_planJourney": {"departure_point": "LA", "cities": ["Fresno", "San Jose"],
                                              "window": {"start": "08:00", "end": "18:00"}}}
    good = '[RoadTripAdvisor_planJourney(departure_point="LA", cities=["Fresno", "San Jose"], ' \
           'window={"start": "08:00", "end": "18:00"})]'
    assert _normal(good, answer).valid
    assert not _normal(good.replace('["Fresno", "San Jose"]', '["San Jose", "Fresno"]'), answer).valid
    extra_key = good.replace('"end": "18:00"', '"end": "18:00", "tz": "PST"')
    assert _normal(extra_key, answer).error_type == "value_error"


def test_strings_with_spaces_in_a_list_inside_a_dict_never_match():
    """ACEBench squeezes whitespace out of the whole answer, strings included, then compares a dict's list value by
    its text: str(['time savings']) is never inside str(['timesavings']). Its own checker rejects such ground
    truths (67 of the 823 en normal items); this port does the same, so figures stay comparable."""
    answer = {"RoadTripAdvisor_planJourney": {"departure_point": "LA", "window": {"start": ["time savings"]}}}
    exact = '[RoadTripAdvisor_planJourney(departure_point="LA", window={"start": ["time savings"]})]'
    assert _normal(exact, answer).error_type == "value_error"
    one_word = {"RoadTripAdvisor_planJourney": {"departure_point": "LA", "window": {"start": ["savings"]}}}
    assert _normal(exact.replace("time savings", "savings"), one_word).valid


def test_lists_of_dicts_element_by_element():
    answer = {"RoadTripAdvisor_planJourney": {"departure_point": "LA", "legs": [{"to": "Fresno"}, {"to": "SF"}]}}
    assert _normal('[RoadTripAdvisor_planJourney(departure_point="LA", legs=[{"to": "Fresno"}, {"to": "SF"}])]',
                   answer).valid
    short = _normal('[RoadTripAdvisor_planJourney(departure_point="LA", legs=[{"to": "Fresno"}])]', answer)
    assert short.error_type == "value_error:list_dict_count"


def test_parallel_answer_keys_lose_their_number_suffix():
    answer = {"RoadTripAdvisor_planJourney_1": {"departure_point": "LA"},
              "RoadTripAdvisor_planJourney_2": {"departure_point": "SF"}}
    both = '[RoadTripAdvisor_planJourney(departure_point="SF"), RoadTripAdvisor_planJourney(departure_point="LA")]'
    assert _normal(both, answer, "normal_single_turn_parallel_function").valid
    one = _normal('[RoadTripAdvisor_planJourney(departure_point="LA")]', answer)
    assert one.error_type == "wrong functions number"


def test_the_reason_of_the_right_function_is_kept_whatever_the_call_order():
    answer = {"RoadTripAdvisor_planJourney": {"departure_point": "Los Angeles", "arrival_point": "San Francisco"},
              "desktop_cpu_monitor": {"host": "a"}}
    trip = 'RoadTripAdvisor_planJourney(departure_point="Los Angeles", arrival_point="Sacramento")'
    for output in (f'[{trip}, desktop_cpu_monitor(host="a")]', f'[desktop_cpu_monitor(host="a"), {trip}]'):
        verdict = _normal(output, answer, "normal_single_turn_parallel_function")
        assert not verdict.valid and verdict.error_type == "value_error:string", (output, verdict)


def test_a_list_of_answers_is_alternatives():
    answer = [{"RoadTripAdvisor_planJourney": {"departure_point": "Boston"}}, ANSWER]
    assert _normal('[RoadTripAdvisor_planJourney(departure_point="Los Angeles", arrival_point="San Francisco")]',
                   answer).valid


def _special(output: str, answer, category: str):
    return check_acebench(output, {"kind": "acebench", "category": category, "answer": answer})


def test_special_incomplete_needs_phrase_function_and_every_missing_parameter():
    answer = {"climate_predict_sea_level_rise": ["latitude", "longitude"]}
    ok = '["Missing necessary parameters (latitude, longitude) for the api (climate_predict_sea_level_rise)"]'
    assert _special(ok, answer, "special_incomplete").valid
    assert _special(ok.replace(", longitude", ""), answer, "special_incomplete").error_type == "error_correction"
    assert _special("Please give me the latitude.", answer, "special_incomplete").error_type == "error_detection"
    call = _special("[climate_predict_sea_level_rise(latitude=1)]", answer, "special_incomplete")
    assert not call.valid


def test_special_error_param_and_irrelevant():
    answer = {"plan_id": ["1234WrongID"]}
    ok = '["There is incorrect value (1234WrongID) for the parameters (plan_id) in the conversation history."]'
    assert _special(ok, answer, "special_error_param").valid
    assert not _special(ok.replace("1234WrongID", "the id"), answer, "special_error_param").valid
    sentence = "Due to the limitations of the function, I cannot solve this problem."
    assert _special(f'["{sentence}"]', sentence, "special_irrelevant").valid
    assert not _special("[]", sentence, "special_irrelevant").valid


@pytest.mark.parametrize("output", ["", "[", "[f(x=lambda: 1)]", "[(" * 200, "[f(**{'a': 1})]", "\x00", 12])
def test_never_raises(output):
    verdict = _normal(output, ANSWER)
    assert not verdict.valid
