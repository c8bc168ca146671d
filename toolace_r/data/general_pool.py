"""A general tool-use corpus, disjoint from the built-in target pool: what the tiny base model is pre-trained on.

Why: ToolACE-R starts from an instruct LLM that already writes calls and solves part of the target pool, so that
its pass rates tell learnable samples from mastered ones (PAPER.md §1). A 1 M-parameter model trained from scratch
solves nothing, and every sample looks "too hard". This generator plays the part of the general instruction data an
instruct model has seen: other tools, other domains, other request wording than `default_pool` — so the base learns
the *skills* (read signatures, pick the function the request names, copy argument values out of the request, several
calls, say when nothing fits) but none of the target pool's tools, phrasings or value lists.

How it forces copying: values are drawn from large open spaces (made-up names from syllables, codes, numbers, dates,
times) so that no value can be memorised; the only way to get an argument right is to copy it from the request.

Tools are made up afresh for every sample (a verb and a noun for the name, attribute words for the parameters),
so the only way to write a tool's name or a parameter's name is to copy it from the prompt. Samples are drawn
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

# The open catalogue: a tool is made up fresh for every sample from these words, so its name and its parameters
# names can only be written by copying them from the prompt (a fixed catalogue was memorised instead: measured,
# a 1 M model trained on 192 fixed tools wrote their names into every target prompt and solved none of it).
NOUNS = ["invoice", "voucher", "parcel", "ticket", "badge", "permit", "lease", "sensor", "drone", "kiln", "loom",
         "hive", "orchard", "vault", "ledger", "locker", "canoe", "glacier", "pipeline", "cluster", "kennel", "quarry",
         "vineyard", "turbine", "satellite", "archive", "manuscript", "fossil", "reactor", "greenhouse", "pallet",
         "container", "warehouse", "tractor", "harvest", "seedling", "beehive", "aquarium", "stable", "saddle",
         "lantern", "compass", "telescope", "microscope", "specimen", "vaccine", "clinic", "pharmacy", "ambulance",
         "classroom", "semester", "thesis", "scholarship", "tutor", "exam", "library", "museum", "gallery",
         "sculpture", "canvas", "mural", "studio", "podcast", "episode", "sponsor", "broadcast", "antenna", "router",
         "server", "database", "backup", "firewall", "certificate", "domain", "mailbox", "newsletter", "survey",
         "ballot", "petition", "donation", "volunteer", "charity", "grant", "budget", "payroll", "pension", "claim",
         "policy", "premium", "contract", "lawsuit", "hearing", "witness", "patent", "trademark", "license",
         "vehicle", "trailer", "garage", "tire", "battery", "charger", "meter", "panel", "boiler", "chimney",
         "roof", "fence", "gate", "bridge", "tunnel", "harbor", "ferry", "berth", "anchor", "yacht", "crew",
         "shift", "roster", "badge", "uniform", "locker", "gym", "trophy", "tournament", "league", "referee",
         "stadium", "arena", "concert", "rehearsal", "choir", "orchestra", "costume", "puppet", "circus", "festival"]
ADJECTIVES = ["solar", "mobile", "annual", "backup", "shared", "private", "remote", "digital", "rental", "spare",
              "night", "weekly", "express", "bulk", "guest", "field", "legacy", "pilot", "sample", "team"]
# attribute word → the kind of value it holds
ATTRIBUTES: dict[str, Kind] = {
    "name": NAME_KIND, "title": NAME_KIND, "owner": NAME_KIND, "label": NAME_KIND, "contact": NAME_KIND,
    "id": CODE_KIND, "code": CODE_KIND, "number": CODE_KIND, "reference": CODE_KIND, "serial": CODE_KIND,
    "note": TEXT_KIND, "message": TEXT_KIND, "comment": TEXT_KIND,
    "email": EMAIL_KIND, "date": DATE_KIND, "deadline": DATE_KIND, "start_date": DATE_KIND,
    "time": TIME_KIND, "start_time": TIME_KIND, "count": COUNT_KIND, "quantity": COUNT_KIND, "hours": COUNT_KIND,
    "limit": COUNT_KIND, "capacity": BIG_INT_KIND, "budget": BIG_INT_KIND, "weight": FLOAT_KIND,
    "length": FLOAT_KIND, "rate": FLOAT_KIND, "price": FLOAT_KIND, "members": NAMES_KIND, "tags": NAMES_KIND,
    "ids": NUMBERS_KIND, "values": NUMBERS_KIND, "urgent": FLAG_KIND, "archived": FLAG_KIND, "notify": FLAG_KIND,
}
ENUMS = {
    "priority": ("low", "normal", "urgent"), "size": ("small", "medium", "large"),
    "format": ("pdf", "csv", "html"), "visibility": ("private", "team", "public"),
    "level": ("beginner", "intermediate", "expert"), "channel": ("phone", "chat", "post"),
    "frequency": ("hourly", "nightly", "quarterly"), "material": ("wood", "steel", "glass", "clay"),
    "sort_order": ("newest", "oldest", "cheapest"), "condition": ("new", "used", "refurbished"),
}
ENUM_NAMES = {"priority": "priority", "size": "size", "format": "format", "visibility": "visibility",
              "level": "level", "channel": "channel", "frequency": "frequency", "material": "material",
              "sort_order": "sort_order", "condition": "condition"}

# verb → (tool-name verb, request phrasings of the verb, how the tool describes itself)
VERBS = {
    "create": ("create", ["create", "set up", "open"], "Create"),
    "cancel": ("cancel", ["cancel", "call off", "withdraw"], "Cancel"),
    "update": ("update", ["update", "change", "modify"], "Update"),
    "get": ("get", ["get", "show me", "fetch", "pull up"], "Get"),
    "search": ("search", ["search for", "find", "look for"], "Search for"),
    "book": ("book", ["book", "reserve"], "Book"),
    "schedule": ("schedule", ["schedule", "plan", "arrange"], "Schedule"),
    "export": ("export", ["export", "download"], "Export"),
    "send": ("send", ["send", "submit", "forward"], "Send"),
    "delete": ("delete", ["delete", "remove", "erase"], "Delete"),
    "calculate": ("calculate", ["calculate", "compute", "work out"], "Calculate"),
    "track": ("track", ["track", "follow", "monitor"], "Track"),
    "register": ("register", ["register", "sign up", "enrol"], "Register"),
    "check": ("check", ["check", "verify", "inspect"], "Check"),
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
    entity: str
    verb: str
    params: list[GParam]

    def schema(self) -> dict[str, Any]:
        entity = self.entity.replace("_", " ")
        return {"name": self.name,
                "description": f"{VERBS[self.verb][2]} {'an' if entity[0] in 'aeiou' else 'a'} {entity}.",
                "parameters": {"type": "dict", "properties": {p.name: p.schema() for p in self.params},
                               "required": [p.name for p in self.params if p.required]}}


def _word(rng: random.Random) -> str:
    """A noun, sometimes made up (so no word list can be memorised either)."""
    return made_up_name(rng, (2, 3)).lower() if rng.random() < 0.25 else rng.choice(NOUNS)


def make_tool(rng: random.Random, entity: str | None = None, verb: str | None = None) -> GTool:
    """A tool made up on the spot: `verb_entity` with 1–4 parameters named after the entity or generic
    attributes, a third of the time an enum parameter, flags always optional, the first parameter required."""
    if entity is None:
        entity = _word(rng) if rng.random() < 0.6 else f"{rng.choice(ADJECTIVES)}_{_word(rng)}"
    verb = verb or rng.choice(sorted(VERBS))
    names: list[str] = []
    params: list[GParam] = []
    for attribute in rng.sample(sorted(ATTRIBUTES), rng.randint(1, 4)):
        name = attribute if rng.random() < 0.4 else f"{entity.split('_')[-1]}_{attribute}"
        if name in names:
            continue
        names.append(name)
        kind = ATTRIBUTES[attribute]
        params.append(GParam(name, kind, required=kind.type != "boolean" and (not params or rng.random() < 0.6)))
    if rng.random() < 0.35:
        enum_key = rng.choice(sorted(ENUM_NAMES))
        params.append(GParam(ENUM_NAMES[enum_key], Kind("string", None, ("{v}", "as {v}", "with {w} {v}")),
                             required=rng.random() < 0.5, enum=ENUMS[enum_key]))
    return GTool(tool_name(rng, verb, entity), entity, verb, params)


# Words a tool's *name* may use for a verb, drawn independently of the request's wording: a name that could be
# composed from the request (`check_episode` for "check an episode") was composed, not copied — measured: such a
# base wrote made-up names like `cancel_kara` into every target prompt. Only the description says what a tool does.
NAME_VERBS = {
    "create": ["create", "new", "add", "make"], "cancel": ["cancel", "abort", "void"],
    "update": ["update", "edit", "patch", "set"], "get": ["get", "fetch", "retrieve", "read"],
    "search": ["search", "find", "query", "browse"], "book": ["book", "reserve", "hold"],
    "schedule": ["schedule", "plan", "slot"], "export": ["export", "dump", "download"],
    "send": ["send", "dispatch", "post"], "delete": ["delete", "remove", "drop"],
    "calculate": ["calculate", "compute", "estimate"], "track": ["track", "monitor", "watch"],
    "register": ["register", "enroll", "signup"], "check": ["check", "verify", "inspect"],
}


def tool_name(rng: random.Random, verb: str, entity: str) -> str:
    """`verb_entity`, `entity_verb` or camelCase, with a name verb the request does not determine."""
    word = rng.choice(NAME_VERBS[verb])
    form = rng.random()
    if form < 0.6:
        return f"{word}_{entity}"
    if form < 0.8:
        return f"{entity}_{word}"
    return word + "".join(part.capitalize() for part in entity.split("_"))


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


def _others(rng: random.Random, exclude: set[str], n: int) -> list[GTool]:
    """n made-up tools of other entities than `exclude`, one per entity."""
    chosen: list[GTool] = []
    while len(chosen) < n:
        tool = make_tool(rng)
        if tool.entity not in exclude and all(tool.entity != c.entity for c in chosen):
            chosen.append(tool)
    return chosen


def _same_entity(rng: random.Random, tool: GTool) -> list[GTool]:
    """Another verb on the same entity (30 % of multiple-choice samples: then the verb decides)."""
    if rng.random() >= 0.3:
        return []
    return [make_tool(rng, tool.entity, rng.choice([v for v in sorted(VERBS) if v != tool.verb]))]


def draw_sample(rng: random.Random, category: str, index: int) -> Sample:
    if category in ("simple", "multiple", "irrelevance"):
        tool = make_tool(rng)
        text, args = _draw_call(rng, tool)
        if category == "simple":
            offered, truth = [tool], [_truth(tool, args)]
        elif category == "multiple":
            offered = [tool] + _same_entity(rng, tool) + _others(rng, {tool.entity}, rng.randint(1, 3))
            truth = [_truth(tool, args)]
        else:
            offered, truth = _others(rng, {tool.entity}, rng.randint(1, 4)), []
    else:
        if category == "parallel":
            tools = [make_tool(rng)] * rng.choice([2, 2, 3])
            offered = [tools[0]]
        else:
            tools = _others(rng, set(), rng.choice([2, 2, 3]))
            offered = tools + _others(rng, {t.entity for t in tools}, rng.randint(0, 2))
        drawn = [_draw_call(rng, t) for t in tools]
        text = drawn[0][0] + "".join(" " + rng.choice(JOINERS) + d[0][0].lower() + d[0][1:] for d in drawn[1:])
        truth = [_truth(t, a) for t, (_, a) in zip(tools, drawn)]
    offered = list(offered)
    rng.shuffle(offered)
    return Sample(id=f"general-{index:07d}", tools=[t.schema() for t in offered],
                  messages=[{"role": "user", "content": text}], truth=truth, category=category,
                  source=f"general/{category}")


def general_samples(sample_seed: int = 0, mix: dict[str, float] | None = None) -> Iterator[Sample]:
    """Fresh samples (and fresh tools) without end, deterministic for `sample_seed`."""
    from toolace_r.data.default_pool import CATEGORY_WEIGHTS

    mix = dict(CATEGORY_WEIGHTS if mix is None else mix)
    rng = random.Random(f"general-samples-{sample_seed}")
    categories, weights = list(mix), list(mix.values())
    index = 0
    while True:
        yield draw_sample(rng, rng.choices(categories, weights)[0], index)
        index += 1
