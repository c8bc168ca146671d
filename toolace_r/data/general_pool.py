"""A general tool-use corpus, disjoint from the built-in target pool: what the tiny base model is pre-trained on.

Why: ToolACE-R starts from an instruct LLM that already writes calls and solves part of the target pool, so that
its pass rates tell learnable samples from mastered ones (PAPER.md §1). A 1 M-parameter model trained from scratch
solves nothing, and every sample looks "too hard". This generator plays the part of the general instruction data an
instruct model has seen: other tools, other domains, other request wording than `default_pool` — so the base learns
the *skills* (read signatures, pick the function the request names, copy argument values out of the request, several
calls, say when nothing fits) but none of the target pool's tools, phrasings or value lists.

How it forces copying: values are drawn from large open spaces (made-up names from syllables, codes, numbers, dates,
times) so that no value can be memorised; the only way to get an argument right is to copy it from the request.

The catalogue (tools, their parameters and request phrasings) is fixed by `catalogue_seed`; samples are drawn
without end from `sample_seed`, so a base model can be trained on fresh samples only. Nothing here overlaps the
target pool: the test `tests/data/test_general_pool.py` checks tool names, parameter names and domains.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from toolace_r.data.schema import Sample, _acceptable

SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "vo", "shi", "dor", "bel", "nu", "qua", "zen", "fi", "gor", "pa", "lin",
             "mar", "tos", "vel", "ri", "an", "esk", "ul", "bra", "cor", "dax", "eli", "fen", "hal", "jun", "kes"]


def made_up_name(rng: random.Random, parts: tuple[int, int] = (2, 3)) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(*parts))).capitalize()


def code(rng: random.Random) -> str:
    letters = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(2, 3)))
    return f"{letters}-{rng.randint(100, 99999)}"


def date(rng: random.Random) -> str:
    return f"{rng.randint(2024, 2027)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def clock(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.choice(['00', '05', '10', '15', '20', '30', '40', '45', '50'])}"


def email(rng: random.Random) -> str:
    return f"{made_up_name(rng).lower()}@{made_up_name(rng, (1, 2)).lower()}.org"


def words(rng: random.Random) -> str:
    return " ".join(made_up_name(rng, (1, 2)).lower() for _ in range(rng.randint(2, 3)))


# ---------------------------------------------------------------------------------------------------------------
# Parameter kinds: a type, a value source and how a request mentions the value ({v})
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    type: str
    gen: Callable[[random.Random], Any] | None
    phrases: tuple[str, ...]  # "{v}" = the value; "{w}" = the parameter's name in words
    enum: tuple[str, ...] = ()
    items: str | None = None


def _int(lo: int, hi: int) -> Callable[[random.Random], int]:
    return lambda rng: rng.randint(lo, hi)


def _float(lo: float, hi: float) -> Callable[[random.Random], float]:
    return lambda rng: round(rng.uniform(lo, hi), rng.choice([1, 2]))


def _list_of(gen: Callable[[random.Random], Any]) -> Callable[[random.Random], list]:
    return lambda rng: [gen(rng) for _ in range(rng.randint(2, 3))]


NAME_KIND = Kind("string", made_up_name, ("named {v}", "called {v}", "for {v}", "with {w} {v}", "{w}: {v}"))
CODE_KIND = Kind("string", code, ("{v}", "with {w} {v}", "number {v}", "{w} {v}"))
TEXT_KIND = Kind("string", words, ("saying '{v}'", "with {w} '{v}'", "'{v}' as the {w}"))
EMAIL_KIND = Kind("string", email, ("to {v}", "at {v}", "with {w} {v}"))
DATE_KIND = Kind("string", date, ("on {v}", "for {v}", "dated {v}", "with {w} {v}"))
TIME_KIND = Kind("string", clock, ("at {v}", "by {v}", "{w} {v}"))
COUNT_KIND = Kind("integer", _int(1, 60), ("{v} {w}", "with {v} {w}", "{w} {v}"))
BIG_INT_KIND = Kind("integer", _int(100, 9000), ("{w} {v}", "of {v} {w}", "with {w} of {v}"))
FLOAT_KIND = Kind("float", _float(0.5, 900), ("{w} {v}", "{v} {w}", "with a {w} of {v}"))
NAMES_KIND = Kind("array", _list_of(made_up_name), ("for {v}", "with {w} {v}", "including {v}"), items="string")
NUMBERS_KIND = Kind("array", _list_of(_int(1, 500)), ("{w} {v}", "with {w} {v}"), items="integer")
FLAG_KIND = Kind("boolean", None, ("with {w}", "and {w} on", "{w} enabled"))

# (domain, [(entity, [(param name, kind, enum values or None)], ...)])
ENUMS = {
    "priority": ("low", "normal", "urgent"), "size": ("small", "medium", "large"),
    "format": ("pdf", "csv", "html"), "visibility": ("private", "team", "public"),
    "level": ("beginner", "intermediate", "expert"), "channel": ("phone", "chat", "post"),
    "frequency": ("hourly", "nightly", "quarterly"), "material": ("wood", "steel", "glass", "clay"),
    "sort_order": ("newest", "oldest", "cheapest"), "condition": ("new", "used", "refurbished"),
}
DOMAINS: dict[str, dict[str, list[tuple[str, Kind]]]] = {
    "library": {"book_loan": [("member_id", CODE_KIND), ("book_title", NAME_KIND), ("due_date", DATE_KIND)],
                "reading_room": [("room_code", CODE_KIND), ("seats", COUNT_KIND), ("start_time", TIME_KIND)]},
    "pets": {"vet_visit": [("pet_name", NAME_KIND), ("visit_date", DATE_KIND), ("clinic_code", CODE_KIND),
                           ("weight_lb", FLOAT_KIND)],
             "pet_license": [("owner_email", EMAIL_KIND), ("pet_name", NAME_KIND), ("tag_number", CODE_KIND)]},
    "garden": {"planting_plan": [("plant_names", NAMES_KIND), ("bed_area", FLOAT_KIND), ("sow_date", DATE_KIND)],
               "irrigation_zone": [("zone_code", CODE_KIND), ("minutes", COUNT_KIND), ("night_mode", FLAG_KIND)]},
    "school": {"course_enrollment": [("student_id", CODE_KIND), ("course_name", NAME_KIND), ("credits", COUNT_KIND)],
               "exam_slot": [("exam_code", CODE_KIND), ("exam_date", DATE_KIND), ("room_size", COUNT_KIND)]},
    "property": {"rental_listing": [("listing_id", CODE_KIND), ("monthly_rent", BIG_INT_KIND),
                                    ("square_meters", FLOAT_KIND), ("furnished", FLAG_KIND)],
                 "viewing": [("agent_name", NAME_KIND), ("viewing_date", DATE_KIND), ("viewing_time", TIME_KIND)]},
    "staffing": {"job_posting": [("job_title", NAME_KIND), ("salary", BIG_INT_KIND), ("remote_ok", FLAG_KIND)],
                 "leave_request": [("employee_id", CODE_KIND), ("first_day", DATE_KIND), ("days_off", COUNT_KIND)]},
    "freight": {"shipment": [("tracking_code", CODE_KIND), ("parcel_weight", FLOAT_KIND), ("recipient", NAME_KIND)],
                "pallet_pickup": [("depot_code", CODE_KIND), ("pallets", COUNT_KIND), ("pickup_date", DATE_KIND)]},
    "astronomy": {"telescope_session": [("target_star", NAME_KIND), ("exposure_seconds", COUNT_KIND),
                                        ("observing_date", DATE_KIND)],
                  "sky_alert": [("object_name", NAME_KIND), ("magnitude", FLOAT_KIND), ("alert_email", EMAIL_KIND)]},
    "garage": {"car_service": [("plate_number", CODE_KIND), ("service_date", DATE_KIND), ("mileage", BIG_INT_KIND)],
               "tire_change": [("plate_number", CODE_KIND), ("tire_count", COUNT_KIND), ("winter_tires", FLAG_KIND)]},
    "games": {"game_lobby": [("lobby_name", NAME_KIND), ("players", COUNT_KIND), ("ranked", FLAG_KIND)],
              "high_score": [("player_tag", NAME_KIND), ("points", BIG_INT_KIND), ("level_code", CODE_KIND)]},
    "photos": {"photo_album": [("album_title", NAME_KIND), ("photo_ids", NUMBERS_KIND), ("shared", FLAG_KIND)],
               "print_order": [("photo_code", CODE_KIND), ("copies", COUNT_KIND), ("print_width", FLOAT_KIND)]},
    "legal": {"contract_review": [("contract_id", CODE_KIND), ("client_name", NAME_KIND), ("deadline", DATE_KIND)],
              "court_filing": [("case_number", CODE_KIND), ("filing_date", DATE_KIND), ("pages", COUNT_KIND)]},
    "insurance": {"claim": [("policy_number", CODE_KIND), ("claim_amount", FLOAT_KIND), ("incident_date", DATE_KIND)],
                  "policy_quote": [("holder_name", NAME_KIND), ("coverage", BIG_INT_KIND), ("smoker", FLAG_KIND)]},
    "farm": {"harvest_log": [("field_code", CODE_KIND), ("tons", FLOAT_KIND), ("crop_names", NAMES_KIND)],
             "feed_order": [("barn_name", NAME_KIND), ("sacks", COUNT_KIND), ("delivery_date", DATE_KIND)]},
    "energy": {"meter_reading": [("meter_id", CODE_KIND), ("kwh", FLOAT_KIND), ("reading_date", DATE_KIND)],
               "solar_panel": [("panel_count", COUNT_KIND), ("roof_area", FLOAT_KIND), ("battery", FLAG_KIND)]},
    "social": {"group_post": [("group_name", NAME_KIND), ("post_text", TEXT_KIND), ("pinned", FLAG_KIND)],
               "friend_invite": [("friend_names", NAMES_KIND), ("invite_note", TEXT_KIND)]},
    "servers": {"deployment": [("service_name", NAME_KIND), ("replicas", COUNT_KIND), ("build_tag", CODE_KIND)],
                "backup_job": [("volume_id", CODE_KIND), ("run_time", TIME_KIND), ("compress", FLAG_KIND)]},
    "museum": {"guided_tour": [("guide_name", NAME_KIND), ("tour_date", DATE_KIND), ("group_size", COUNT_KIND)],
               "exhibit_loan": [("exhibit_code", CODE_KIND), ("lender", NAME_KIND), ("insured_value", BIG_INT_KIND)]},
    "parking": {"parking_permit": [("plate_number", CODE_KIND), ("permit_days", COUNT_KIND), ("zone_name", NAME_KIND)],
                "garage_spot": [("level_number", COUNT_KIND), ("arrival_time", TIME_KIND), ("charger", FLAG_KIND)]},
    "charity": {"donation": [("donor_name", NAME_KIND), ("gift_amount", FLOAT_KIND), ("anonymous", FLAG_KIND)],
                "volunteer_shift": [("volunteer_email", EMAIL_KIND), ("shift_date", DATE_KIND),
                                    ("shift_hours", COUNT_KIND)]},
    "podcast": {"episode": [("episode_title", NAME_KIND), ("duration_minutes", COUNT_KIND),
                            ("guest_names", NAMES_KIND)],
                "sponsor_slot": [("sponsor_name", NAME_KIND), ("slot_seconds", COUNT_KIND), ("ad_code", CODE_KIND)]},
    "lab": {"sample_test": [("sample_code", CODE_KIND), ("volume_ml", FLOAT_KIND), ("test_date", DATE_KIND)],
            "equipment_booking": [("instrument_name", NAME_KIND), ("hours", COUNT_KIND), ("start_time", TIME_KIND)]},
    "printing": {"poster_job": [("design_code", CODE_KIND), ("sheets", COUNT_KIND), ("glossy", FLAG_KIND)],
                 "binding_job": [("report_title", NAME_KIND), ("page_numbers", NUMBERS_KIND)]},
    "sailing": {"boat_charter": [("boat_name", NAME_KIND), ("charter_date", DATE_KIND), ("crew_size", COUNT_KIND)],
                "mooring": [("berth_code", CODE_KIND), ("nights", COUNT_KIND), ("boat_length", FLOAT_KIND)]},
}
ENUM_PARAMS = [("priority", "priority"), ("size", "size"), ("format", "format"), ("visibility", "visibility"),
               ("level", "level"), ("channel", "contact_channel"), ("frequency", "frequency"),
               ("material", "material"), ("sort_order", "sort_order"), ("condition", "condition")]

# verb → (tool-name verb, request phrasings of the verb, how the tool describes itself)
VERBS = {
    "create": ("create", ["create", "set up", "open", "register"], "Create"),
    "cancel": ("cancel", ["cancel", "call off", "withdraw"], "Cancel"),
    "update": ("update", ["update", "change", "modify"], "Update"),
    "lookup": ("lookup", ["look up", "find", "check"], "Look up"),
    "schedule": ("schedule", ["schedule", "plan", "arrange"], "Schedule"),
    "export": ("export", ["export", "download", "send me"], "Export"),
}
OPENERS = ["{verb} {a} {entity} {params}.", "Please {verb} {a} {entity} {params}.",
           "Can you {verb} {a} {entity} {params}?", "I need to {verb} {a} {entity} {params}.",
           "{Verb} the {entity} {params}, thanks.", "Could you {verb} my {entity} {params}?",
           "Help me {verb} {a} {entity}: {params}."]
JOINERS = ["Also, ", "And then ", "Next, ", "Additionally, "]


@dataclass
class GParam:
    name: str
    kind: Kind
    required: bool
    enum: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind.type, "description": self.name.replace("_", " ").capitalize()}
        if self.enum:
            out["enum"] = list(self.enum)
        if self.kind.items:
            out["items"] = {"type": self.kind.items}
        return out


@dataclass
class GTool:
    name: str
    domain: str
    entity: str
    verb: str
    params: list[GParam]

    def schema(self) -> dict[str, Any]:
        entity = self.entity.replace("_", " ")
        return {"name": self.name,
                "description": f"{VERBS[self.verb][2]} {'an' if entity[0] in 'aeiou' else 'a'} {entity}.",
                "parameters": {"type": "dict", "properties": {p.name: p.schema() for p in self.params},
                               "required": [p.name for p in self.params if p.required]}}


def build_catalogue(seed: int = 0) -> list[GTool]:
    """Every (domain entity, verb) pair that makes sense as a tool, with a fixed parameter list per tool: the
    entity's own parameters (some optional) plus, for a third of the tools, one enum parameter."""
    rng = random.Random(f"general-catalogue-{seed}")
    tools: list[GTool] = []
    for domain, entities in DOMAINS.items():
        for entity, params in entities.items():
            for verb in rng.sample(sorted(VERBS), 4):
                # flags are optional (a request only mentions one to switch it on); the first parameter is required
                chosen = [GParam(name, kind, required=kind.type != "boolean" and (i == 0 or rng.random() < 0.6))
                          for i, (name, kind) in enumerate(params)]
                if rng.random() < 0.35:
                    enum_key, enum_name = rng.choice(ENUM_PARAMS)
                    chosen.append(GParam(enum_name, Kind("string", None, ("{v}", "as {v}", "with {w} {v}")),
                                         required=rng.random() < 0.5, enum=ENUMS[enum_key]))
                tools.append(GTool(f"{VERBS[verb][0]}_{entity}", domain, entity, verb, chosen))
    return tools


def _surface(value: Any) -> str:
    if isinstance(value, list):
        items = [str(v) for v in value]
        return ", ".join(items[:-1]) + " and " + items[-1]
    return str(value)


def _draw_call(rng: random.Random, tool: GTool) -> tuple[str, dict[str, Any]]:
    """A request for `tool` and the arguments it implies: every required parameter and each optional one with
    probability 1/2 are mentioned (flags only when true)."""
    args: dict[str, Any] = {}
    phrases: list[str] = []
    for p in tool.params:
        if not p.required and rng.random() < 0.5:
            continue
        if p.kind.type == "boolean":
            value: Any = True
        elif p.enum:
            value = rng.choice(p.enum)
        else:
            value = p.kind.gen(rng)  # type: ignore[misc]
        args[p.name] = value
        phrase = rng.choice(p.kind.phrases)
        phrases.append(phrase.replace("{w}", p.name.replace("_", " ")).replace("{v}", _surface(value)))
    rng.shuffle(phrases)
    joined = ", ".join(phrases[:-1]) + (" and " if len(phrases) > 1 else "") + phrases[-1] if phrases else ""
    verb = rng.choice(VERBS[tool.verb][1])
    entity = tool.entity.replace("_", " ")
    text = rng.choice(OPENERS).format(verb=verb, Verb=verb.capitalize(), entity=entity, params=joined,
                                      a="an" if entity[0] in "aeiou" else "a")
    return text[0].upper() + text[1:], args


def _truth(tool: GTool, args: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    out: dict[str, list[Any]] = {}
    for p in tool.params:
        if p.name in args:
            out[p.name] = [_acceptable(args[p.name])]
        elif not p.required:
            out[p.name] = [""]
    return {tool.name: out}


def _others(rng: random.Random, catalogue: list[GTool], exclude: set[str], n: int) -> list[GTool]:
    """n tools of other entities than `exclude`, one per entity."""
    chosen: list[GTool] = []
    for t in rng.sample(catalogue, len(catalogue)):
        if len(chosen) == n:
            break
        if t.entity not in exclude and all(t.entity != c.entity for c in chosen):
            chosen.append(t)
    return chosen


def _same_entity(rng: random.Random, catalogue: list[GTool], tool: GTool) -> list[GTool]:
    """Another verb on the same entity (asked for 30 % of multiple-choice samples: the verb decides)."""
    siblings = [t for t in catalogue if t.entity == tool.entity and t.name != tool.name]
    return [rng.choice(siblings)] if siblings and rng.random() < 0.3 else []


def draw_sample(rng: random.Random, catalogue: list[GTool], category: str, index: int) -> Sample:
    if category in ("simple", "multiple", "irrelevance"):
        tool = rng.choice(catalogue)
        text, args = _draw_call(rng, tool)
        if category == "simple":
            offered, truth = [tool], [_truth(tool, args)]
        elif category == "multiple":
            offered = [tool] + _same_entity(rng, catalogue, tool) + _others(rng, catalogue, {tool.entity},
                                                                             rng.randint(1, 3))
            truth = [_truth(tool, args)]
        else:
            offered, truth = _others(rng, catalogue, {tool.entity}, rng.randint(1, 4)), []
    else:
        if category == "parallel":
            tools = [rng.choice(catalogue)] * rng.choice([2, 2, 3])
            offered = [tools[0]]
        else:
            tools = []
            for t in rng.sample(catalogue, len(catalogue)):
                if all(t.entity != u.entity for u in tools):
                    tools.append(t)
                if len(tools) == rng.choice([2, 2, 3]) or len(tools) == 3:
                    break
            offered = tools + _others(rng, catalogue, {t.entity for t in tools}, rng.randint(0, 2))
        drawn = [_draw_call(rng, t) for t in tools]
        text = drawn[0][0] + "".join(" " + rng.choice(JOINERS) + d[0][0].lower() + d[0][1:] for d in drawn[1:])
        truth = [_truth(t, a) for t, (_, a) in zip(tools, drawn)]
    offered = list(offered)
    rng.shuffle(offered)
    return Sample(id=f"general-{index:07d}", tools=[t.schema() for t in offered],
                  messages=[{"role": "user", "content": text}], truth=truth, category=category,
                  source=f"general/{category}")


def general_samples(sample_seed: int = 0, catalogue_seed: int = 0,
                    mix: dict[str, float] | None = None) -> Iterator[Sample]:
    """Fresh samples without end, deterministic for (sample_seed, catalogue_seed)."""
    from toolace_r.data.default_pool import CATEGORY_WEIGHTS

    mix = dict(CATEGORY_WEIGHTS if mix is None else mix)
    catalogue = build_catalogue(catalogue_seed)
    rng = random.Random(f"general-samples-{sample_seed}")
    categories, weights = list(mix), list(mix.values())
    index = 0
    while True:
        yield draw_sample(rng, catalogue, rng.choices(categories, weights)[0], index)
        index += 1
