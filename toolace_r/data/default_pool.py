"""The built-in default pool: a generated, varied tool-calling data set, so the demo needs no download.

Why generated: the project cannot ship third-party data, yet the iterative loop needs a pool with categories of
different difficulty for model-aware selection to matter. The generator draws, from one seed:

- 34 tools in 12 domains (weather, finance, travel, math, calendar, e-commerce, music, messaging, health, home,
  food, news/translation) with string / int / float / bool / enum / list / nested-object parameters and optional ones;
- requests from several paraphrase templates per tool, with varied slot values;
- five BFCL categories: simple (one tool offered), multiple (3–5 candidates, one right), parallel (the same tool
  called 2–3 times), parallel_multiple (2–3 different tools among 3–5 candidates) and irrelevance (the requested
  capability is not among the offered tools; the right answer is no call).

Tool descriptions are short so that a prompt in the compact style stays around 150–300 tokens (STACK.md: a 1 M
parameter model learns such a pool in minutes on CPU; single calls are easy, parallel and irrelevance are hard).

The held-out split is generated first, from its own random stream, so it does not change with `n_train`; a train
sample is rejected when one of its calls repeats a held-out (tool, template, argument values) combination or when it
repeats a request already in the pool.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from toolace_r.data.schema import Sample, _acceptable
from toolace_r.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------------
# Value pools for slots
# ---------------------------------------------------------------------------------------------------------------
CITIES = ["Paris", "Tokyo", "Berlin", "Madrid", "Rome", "Lisbon", "Oslo", "Vienna", "Prague", "Dublin", "Seoul",
          "Sydney", "Toronto", "Chicago", "Boston", "Denver", "Austin", "Seattle", "Mumbai", "Cairo", "Nairobi",
          "Lima", "Bogota", "Santiago", "Istanbul", "Athens", "Warsaw", "Helsinki", "Zurich", "Amsterdam",
          "Singapore", "Bangkok", "Hanoi", "Manila", "Osaka", "Montreal", "Vancouver", "Miami", "Phoenix", "Houston"]
AIRPORTS = ["JFK", "LAX", "SFO", "ORD", "LHR", "CDG", "FRA", "AMS", "MAD", "FCO", "NRT", "HND", "SIN", "DXB", "SYD",
            "YYZ", "BOS", "SEA", "DEN", "MIA", "IST", "ZRH", "VIE", "CPH"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "CNY", "INR", "SEK", "NOK", "MXN"]
STOCKS = ["AAPL", "MSFT", "GOOGL", "AMZN", "TSLA", "NVDA", "META", "IBM", "ORCL", "NFLX", "INTC", "AMD", "SAP", "UBER"]
PEOPLE = ["Alice", "Bob", "Carmen", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam",
          "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
SONGS = ["Blue Horizon", "Midnight Train", "Golden Hour", "Paper Planes", "River Song", "Neon Lights", "Slow Dance",
         "Summer Rain", "Wild Hearts", "Echoes", "Firefly", "Silver Moon", "Northern Sky", "Open Road", "Daydream"]
ARTISTS = ["The Lumens", "Nova Reed", "Atlas Avenue", "Mira Sol", "Kite Theory", "June Harbor", "Velvet Static",
           "Oscar Lane", "The Driftwoods", "Lila Crane", "Echo Valley", "Marco Ruiz"]
GENRES = ["rock", "jazz", "pop", "classical", "hip hop", "electronic", "folk", "blues"]
PRODUCTS = ["wireless headphones", "running shoes", "coffee grinder", "yoga mat", "desk lamp", "backpack",
            "water bottle", "mechanical keyboard", "phone case", "air fryer", "electric kettle", "rain jacket",
            "board game", "camping tent", "smart watch", "office chair"]
SKUS = ["SKU-1042", "SKU-2210", "SKU-3381", "SKU-4405", "SKU-5120", "SKU-6634", "SKU-7719", "SKU-8857", "SKU-9023"]
CUISINES = ["italian", "japanese", "mexican", "indian", "thai", "french", "greek", "korean", "vegan"]
LANGUAGES = ["spanish", "french", "german", "italian", "japanese", "portuguese", "korean", "dutch"]
PHRASES = ["Where is the train station?", "Thank you for your help", "The meeting starts at noon",
           "I would like a table for two", "How much does this cost?", "Happy birthday to you", "See you tomorrow",
           "The weather is lovely today", "Please call me back", "Good morning, everyone"]
TOPICS = ["technology", "sports", "science", "business", "health", "politics", "climate", "space"]
TEAMS = ["Lions", "Falcons", "Rovers", "Comets", "Titans", "Sharks", "Wolves", "Pirates", "Dragons", "Rangers"]
EVENTS = ["team meeting", "dentist appointment", "project review", "lunch with Sam", "yoga class", "budget call",
          "design sync", "piano lesson", "parent conference", "book club"]
REMINDERS = ["water the plants", "pay the rent", "call mom", "renew the passport", "take the medicine",
             "submit the report", "buy groceries", "back up the laptop"]
ROOMS = ["kitchen", "living room", "bedroom", "office", "garage", "hallway", "bathroom"]
STREETS = ["12 Oak Street", "5 Elm Road", "88 Pine Avenue", "301 Maple Lane", "47 Cedar Drive", "9 Birch Court",
           "150 Lake Road", "23 Hill Street"]
EXERCISES = ["running", "cycling", "swimming", "rowing", "walking", "hiking"]
FOODS = ["pasta", "pancakes", "curry", "risotto", "tacos", "lentil soup", "banana bread", "stir fry"]
INGREDIENTS = ["chicken", "rice", "spinach", "tomatoes", "garlic", "mushrooms", "tofu", "eggs", "basil", "beans"]


def months_date(rng: random.Random) -> str:
    return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def clock_time(rng: random.Random) -> str:
    return f"{rng.randint(7, 20):02d}:{rng.choice(['00', '15', '30', '45'])}"


def pick(values: list) -> Callable[[random.Random], Any]:
    return lambda rng: rng.choice(values)


def integer(lo: int, hi: int, step: int = 1) -> Callable[[random.Random], int]:
    return lambda rng: rng.randrange(lo, hi + 1, step)


def decimal(lo: float, hi: float, digits: int = 1) -> Callable[[random.Random], float]:
    return lambda rng: round(rng.uniform(lo, hi), digits)


def sample_of(values: list, lo: int = 2, hi: int = 3) -> Callable[[random.Random], list]:
    return lambda rng: rng.sample(values, rng.randint(lo, hi))


def numbers(lo: int, hi: int, n_lo: int = 3, n_hi: int = 5) -> Callable[[random.Random], list]:
    return lambda rng: [rng.randint(lo, hi) for _ in range(rng.randint(n_lo, n_hi))]


# ---------------------------------------------------------------------------------------------------------------
# Tool catalogue
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Param:
    name: str
    type: str  # BFCL types: string integer float boolean array dict
    description: str
    gen: Callable[[random.Random], Any] | None = None  # None for booleans/fixed-only params
    required: bool = True
    enum: list | None = None
    default: Any = None  # optional params with a default: the truth accepts leaving them out or the default
    items: str | None = None  # element type of arrays
    props: list["Param"] = field(default_factory=list)  # properties of dicts

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.enum:
            out["enum"] = list(self.enum)
        if self.items:
            out["items"] = {"type": self.items}
        if self.props:
            out["properties"] = {p.name: p.schema() for p in self.props}
            out["required"] = [p.name for p in self.props if p.required]
        if self.default is not None:
            out["default"] = self.default
        return out


@dataclass
class Tool:
    name: str
    description: str
    group: str  # capability group: an irrelevance case never offers a tool of the requested tool's group
    domain: str
    params: list[Param]
    templates: list[tuple[str, dict[str, Any]]]  # (request text with {slot}s, fixed arguments)
    fixup: Callable[[random.Random, dict[str, Any]], None] | None = None  # makes drawn values consistent

    def schema(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": {
                "type": "dict",
                "properties": {p.name: p.schema() for p in self.params},
                "required": [p.name for p in self.params if p.required],
            },
        }


P = Param
UNIT_PAIRS = {"km": ["mile", "meter"], "mile": ["km", "foot"], "meter": ["foot", "km"], "foot": ["meter", "mile"],
              "kg": ["pound"], "pound": ["kg"]}
UNIT = P("unit", "string", "Temperature unit", pick(["celsius", "fahrenheit"]), required=False,
         enum=["celsius", "fahrenheit"], default="celsius")

TOOLS: list[Tool] = [
    # --- weather ---
    Tool("get_current_weather", "Current weather in a city.", "weather_now", "weather",
         [P("city", "string", "City name", pick(CITIES)), UNIT],
         [("What's the weather like in {city} right now?", {}),
          ("How warm is it in {city} at the moment, in {unit}?", {}),
          ("Tell me the current temperature in {city} in {unit}.", {}),
          ("Is it raining in {city} today?", {}),
          ("Current conditions in {city}, please.", {})]),
    Tool("get_forecast", "Weather forecast for the next days.", "weather_forecast", "weather",
         [P("city", "string", "City name", pick(CITIES)),
          P("days", "integer", "Number of days, 1-10", integer(1, 10)),
          P("hourly", "boolean", "Include hourly detail", required=False, default=False)],
         [("Give me the {days}-day forecast for {city}.", {}),
          ("What will the weather be in {city} over the next {days} days?", {}),
          ("I need an hourly forecast for {city} for {days} days.", {"hourly": True}),
          ("Forecast for {city}, {days} days ahead, hour by hour please.", {"hourly": True})]),
    Tool("get_air_quality", "Air quality index for a city.", "air_quality", "weather",
         [P("city", "string", "City name", pick(CITIES)),
          P("pollutants", "array", "Pollutants to report", sample_of(["pm25", "pm10", "ozone", "no2"], 1, 2),
            required=False, items="string")],
         [("How clean is the air in {city}?", {}),
          ("Check the air quality index in {city}.", {}),
          ("What are the {pollutants} levels in {city}?", {})]),
    # --- finance ---
    Tool("get_stock_price", "Latest price of a stock.", "stock_price", "finance",
         [P("symbol", "string", "Ticker symbol", pick(STOCKS)),
          P("exchange", "string", "Exchange", pick(["NASDAQ", "NYSE", "LSE"]), required=False,
            enum=["NASDAQ", "NYSE", "LSE"])],
         [("What is {symbol} trading at?", {}),
          ("Get me the latest price of {symbol}.", {}),
          ("Quote {symbol} on the {exchange}.", {}),
          ("How much is one share of {symbol} right now?", {})]),
    Tool("convert_currency", "Convert an amount between currencies.", "currency", "finance",
         [P("amount", "float", "Amount to convert", decimal(5, 5000, 2)),
          P("from_currency", "string", "ISO code to convert from", pick(CURRENCIES)),
          P("to_currency", "string", "ISO code to convert to", pick(CURRENCIES))],
         [("Convert {amount} {from_currency} to {to_currency}.", {}),
          ("How much is {amount} {from_currency} in {to_currency}?", {}),
          ("I have {amount} {from_currency}; what is that in {to_currency}?", {}),
          ("Exchange {amount} from {from_currency} into {to_currency} for me.", {})]),
    Tool("calculate_loan_payment", "Monthly payment of a loan.", "loan", "finance",
         [P("principal", "integer", "Loan amount", integer(5000, 500000, 500)),
          P("annual_rate", "float", "Yearly interest rate in percent", decimal(1.5, 9.5, 2)),
          P("years", "integer", "Term in years", integer(1, 30))],
         [("What's the monthly payment on a {principal} loan at {annual_rate}% for {years} years?", {}),
          ("Calculate the payment for borrowing {principal} over {years} years at {annual_rate} percent.", {}),
          ("I want a loan of {principal} for {years} years with {annual_rate}% interest. Monthly cost?", {})]),
    Tool("get_portfolio_value", "Total value of several stock holdings.", "portfolio", "finance",
         [P("symbols", "array", "Ticker symbols", sample_of(STOCKS, 2, 4), items="string"),
          P("currency", "string", "Reporting currency", pick(["USD", "EUR", "GBP"]), required=False,
            enum=["USD", "EUR", "GBP"], default="USD")],
         [("What is my portfolio of {symbols} worth?", {}),
          ("Value my holdings in {symbols} in {currency}.", {}),
          ("Sum up the value of {symbols} for me.", {})]),
    # --- travel ---
    Tool("search_flights", "Find flights between airports.", "flights", "travel",
         [P("origin", "string", "Departure airport code", pick(AIRPORTS)),
          P("destination", "string", "Arrival airport code", pick(AIRPORTS)),
          P("date", "string", "Date, YYYY-MM-DD", months_date),
          P("cabin", "string", "Cabin class", pick(["economy", "premium", "business", "first"]), required=False,
            enum=["economy", "premium", "business", "first"], default="economy"),
          P("nonstop", "boolean", "Only direct flights", required=False, default=False)],
         [("Find flights from {origin} to {destination} on {date}.", {}),
          ("I need a {cabin} seat from {origin} to {destination} on {date}.", {}),
          ("Any nonstop flights {origin} to {destination} on {date}?", {"nonstop": True}),
          ("Search direct {cabin} flights from {origin} to {destination} for {date}.", {"nonstop": True}),
          ("Show me options flying {origin} -> {destination} on {date}.", {})]),
    Tool("book_hotel", "Book a hotel room.", "hotel", "travel",
         [P("city", "string", "City", pick(CITIES)),
          P("check_in", "string", "Check-in date, YYYY-MM-DD", months_date),
          P("nights", "integer", "Number of nights", integer(1, 14)),
          P("guests", "integer", "Number of guests", integer(1, 6), required=False, default=1)],
         [("Book a hotel in {city} from {check_in} for {nights} nights.", {}),
          ("Reserve a room in {city} for {guests} guests, checking in {check_in}, {nights} nights.", {}),
          ("I need a place to stay in {city}: {nights} nights starting {check_in}.", {})]),
    Tool("get_directions", "Route between two places.", "directions", "travel",
         [P("start", "string", "Start place", pick(CITIES)),
          P("end", "string", "Destination", pick(CITIES)),
          P("mode", "string", "Travel mode", pick(["driving", "walking", "cycling", "transit"]), required=False,
            enum=["driving", "walking", "cycling", "transit"], default="driving")],
         [("How do I get from {start} to {end}?", {}),
          ("Give me {mode} directions from {start} to {end}.", {}),
          ("Route from {start} to {end} by {mode}, please.", {})]),
    Tool("rent_car", "Rent a car at a pickup city.", "car_rental", "travel",
         [P("city", "string", "Pickup city", pick(CITIES)),
          P("pickup_date", "string", "Date, YYYY-MM-DD", months_date),
          P("days", "integer", "Rental days", integer(1, 21)),
          P("car_class", "string", "Car class", pick(["compact", "suv", "van", "luxury"]), required=False,
            enum=["compact", "suv", "van", "luxury"])],
         [("Rent me a car in {city} on {pickup_date} for {days} days.", {}),
          ("I need a {car_class} in {city} from {pickup_date}, {days} days.", {}),
          ("Book a rental car: pickup {city}, {pickup_date}, {days} days.", {})]),
    # --- math ---
    Tool("calculate_mean", "Average of a list of numbers.", "mean", "math",
         [P("numbers", "array", "The numbers", numbers(1, 99), items="integer")],
         [("What is the average of {numbers}?", {}),
          ("Compute the mean of {numbers}.", {}),
          ("Find the arithmetic mean of these values: {numbers}.", {})]),
    Tool("solve_quadratic", "Roots of ax^2 + bx + c = 0.", "quadratic", "math",
         [P("a", "integer", "Coefficient a", integer(1, 9)),
          P("b", "integer", "Coefficient b", integer(-20, 20)),
          P("c", "integer", "Coefficient c", integer(-20, 20))],
         [("Solve {a}x^2 + {b}x + {c} = 0.", {}),
          ("Find the roots of the quadratic with a={a}, b={b}, c={c}.", {}),
          ("What are the solutions when a is {a}, b is {b} and c is {c}?", {})]),
    Tool("compute_factorial", "Factorial of a non-negative integer.", "factorial", "math",
         [P("n", "integer", "The integer", integer(0, 20))],
         [("What is {n} factorial?", {}),
          ("Compute {n}! for me.", {}),
          ("Calculate the factorial of {n}.", {})]),
    Tool("convert_units", "Convert a quantity between length or mass units.", "units", "math",
         [P("value", "float", "Quantity", decimal(0.5, 500, 1)),
          P("from_unit", "string", "Unit to convert from", pick(list(UNIT_PAIRS)), enum=list(UNIT_PAIRS)),
          P("to_unit", "string", "Unit to convert to", pick(list(UNIT_PAIRS)), enum=list(UNIT_PAIRS))],
         [("Convert {value} {from_unit} to {to_unit}.", {}),
          ("How many {to_unit} is {value} {from_unit}?", {}),
          ("Express {value} {from_unit} in {to_unit}.", {})],
         fixup=lambda rng, args: args.__setitem__("to_unit", rng.choice(UNIT_PAIRS[args["from_unit"]]))),
    Tool("calculate_percentage", "What percent one number is of another.", "percentage", "math",
         [P("part", "float", "The part", decimal(1, 500, 1)),
          P("whole", "float", "The whole", decimal(500, 5000, 1))],
         [("What percent of {whole} is {part}?", {}),
          ("Express {part} as a percentage of {whole}.", {}),
          ("{part} out of {whole} is how many percent?", {})]),
    # --- calendar ---
    Tool("create_event", "Add an event to the calendar.", "event_create", "calendar",
         [P("title", "string", "Event title", pick(EVENTS)),
          P("date", "string", "Date, YYYY-MM-DD", months_date),
          P("time", "string", "Start time, HH:MM", clock_time),
          P("duration_minutes", "integer", "Length in minutes", integer(15, 180, 15), required=False, default=60),
          P("attendees", "array", "People to invite", sample_of(PEOPLE, 1, 3), required=False, items="string")],
         [("Schedule a {title} on {date} at {time}.", {}),
          ("Put {title} in my calendar for {date} at {time}, {duration_minutes} minutes.", {}),
          ("Create an event '{title}' on {date} at {time} and invite {attendees}.", {}),
          ("Add {title} at {time} on {date} lasting {duration_minutes} minutes with {attendees}.", {})]),
    Tool("list_events", "List calendar events on a date.", "event_list", "calendar",
         [P("date", "string", "Date, YYYY-MM-DD", months_date)],
         [("What's on my calendar on {date}?", {}),
          ("List my events for {date}.", {}),
          ("Do I have anything scheduled on {date}?", {})]),
    Tool("set_reminder", "Set a reminder.", "reminder", "calendar",
         [P("text", "string", "What to remember", pick(REMINDERS)),
          P("date", "string", "Date, YYYY-MM-DD", months_date),
          P("time", "string", "Time, HH:MM", clock_time, required=False),
          P("repeat", "string", "Repetition", pick(["daily", "weekly", "monthly"]), required=False,
            enum=["none", "daily", "weekly", "monthly"], default="none")],
         [("Remind me to {text} on {date}.", {}),
          ("Set a reminder on {date} at {time} to {text}.", {}),
          ("Starting {date}, remind me {repeat} to {text}.", {}),
          ("Don't let me forget to {text} on {date} at {time}.", {})]),
    # --- e-commerce ---
    Tool("search_products", "Search the shop catalogue.", "product_search", "shop",
         [P("query", "string", "Search words", pick(PRODUCTS)),
          P("max_price", "float", "Highest price", decimal(10, 400, 0), required=False),
          P("in_stock", "boolean", "Only items in stock", required=False, default=False)],
         [("Search the shop for {query}.", {}),
          ("Find {query} under {max_price} dollars.", {}),
          ("Show me {query} options that are in stock.", {"in_stock": True}),
          ("Look for in-stock {query} costing at most {max_price}.", {"in_stock": True})]),
    Tool("track_order", "Shipping status of an order.", "order_status", "shop",
         [P("order_id", "string", "Order number", lambda rng: f"ORD-{rng.randint(10000, 99999)}")],
         [("Where is my order {order_id}?", {}),
          ("Track order {order_id}.", {}),
          ("Has {order_id} shipped yet?", {})]),
    Tool("place_order", "Order an item and ship it to an address.", "order_place", "shop",
         [P("sku", "string", "Item SKU", pick(SKUS)),
          P("quantity", "integer", "How many", integer(1, 5)),
          P("shipping_address", "dict", "Where to ship", props=[
              P("street", "string", "Street and number", pick(STREETS)),
              P("city", "string", "City", pick(CITIES)),
              P("zip", "string", "Postal code", lambda rng: f"{rng.randint(10000, 99999)}")]),
          P("express", "boolean", "Express shipping", required=False, default=False)],
         [("Order {quantity} of {sku} to {shipping_address.street}, {shipping_address.city} "
           "{shipping_address.zip}.", {}),
          ("Buy {quantity} x {sku} and ship express to {shipping_address.street}, {shipping_address.city}, "
           "zip {shipping_address.zip}.", {"express": True}),
          ("Send {quantity} units of {sku} to {shipping_address.street} in {shipping_address.city} "
           "({shipping_address.zip}).", {})]),
    Tool("return_item", "Start a return for an order.", "order_return", "shop",
         [P("order_id", "string", "Order number", lambda rng: f"ORD-{rng.randint(10000, 99999)}"),
          P("reason", "string", "Why", pick(["damaged", "wrong size", "not as described", "changed mind"]),
            enum=["damaged", "wrong size", "not as described", "changed mind"])],
         [("I want to return order {order_id}, reason: {reason}.", {}),
          ("Start a return for {order_id} because it is {reason}.", {}),
          ("Please process a return of {order_id} ({reason}).", {})]),
    # --- music ---
    Tool("play_song", "Play a song.", "play", "music",
         [P("title", "string", "Song title", pick(SONGS)),
          P("artist", "string", "Artist", pick(ARTISTS), required=False),
          P("shuffle", "boolean", "Shuffle afterwards", required=False, default=False)],
         [("Play {title}.", {}),
          ("Put on {title} by {artist}.", {}),
          ("I want to hear {title} from {artist}, then shuffle.", {"shuffle": True}),
          ("Start the song {title}.", {})]),
    Tool("create_playlist", "Create a playlist from songs.", "playlist", "music",
         [P("name", "string", "Playlist name", pick(["Road Trip", "Focus", "Workout", "Sunday", "Party", "Chill"])),
          P("songs", "array", "Song titles", sample_of(SONGS, 2, 3), items="string"),
          P("public", "boolean", "Visible to others", required=False, default=False)],
         [("Make a playlist called {name} with {songs}.", {}),
          ("Create a public playlist {name} containing {songs}.", {"public": True}),
          ("New playlist '{name}': {songs}.", {})]),
    Tool("recommend_music", "Recommend songs in a genre.", "music_recommend", "music",
         [P("genre", "string", "Genre", pick(GENRES), enum=GENRES),
          P("count", "integer", "How many songs", integer(3, 20), required=False, default=10)],
         [("Recommend some {genre} songs.", {}),
          ("Suggest {count} {genre} tracks.", {}),
          ("I'm in the mood for {genre}; give me {count} songs.", {})]),
    # --- messaging ---
    Tool("send_email", "Send an email.", "email", "messaging",
         [P("to", "string", "Recipient address", lambda rng: f"{rng.choice(PEOPLE).lower()}@example.com"),
          P("subject", "string", "Subject", pick(["Invoice", "Meeting notes", "Trip plan", "Weekend", "Report"])),
          P("body", "string", "Text", pick(PHRASES)),
          P("cc", "array", "Copy to", lambda rng: [f"{p.lower()}@example.com" for p in rng.sample(PEOPLE, 1)],
            required=False, items="string")],
         [("Email {to} with subject {subject} saying '{body}'.", {}),
          ("Send an email to {to}, subject '{subject}', body: {body}", {}),
          ("Write to {to} about {subject}: '{body}', cc {cc}.", {})]),
    Tool("send_sms", "Send a text message.", "sms", "messaging",
         [P("phone", "string", "Phone number", lambda rng: f"+1555{rng.randint(1000000, 9999999)}"),
          P("message", "string", "Text", pick(PHRASES))],
         [("Text {phone}: '{message}'.", {}),
          ("Send an SMS to {phone} saying '{message}'.", {}),
          ("Message {phone} with '{message}'.", {})]),
    # --- health ---
    Tool("calculate_bmi", "Body mass index.", "bmi", "health",
         [P("weight_kg", "float", "Weight in kg", decimal(45, 120, 1)),
          P("height_m", "float", "Height in meters", decimal(1.45, 2.05, 2))],
         [("What's the BMI for {weight_kg} kg and {height_m} m?", {}),
          ("Calculate my body mass index: I weigh {weight_kg} kg and I'm {height_m} m tall.", {}),
          ("BMI of someone {height_m} m tall weighing {weight_kg} kg?", {})]),
    Tool("log_workout", "Record a workout.", "workout", "health",
         [P("activity", "string", "Activity", pick(EXERCISES), enum=EXERCISES),
          P("minutes", "integer", "Duration", integer(10, 120, 5)),
          P("intensity", "string", "Effort", pick(["low", "medium", "high"]), required=False,
            enum=["low", "medium", "high"], default="medium")],
         [("Log {minutes} minutes of {activity}.", {}),
          ("I did {activity} for {minutes} minutes at {intensity} intensity; record it.", {}),
          ("Track a {intensity} effort {activity} session of {minutes} minutes.", {})]),
    # --- home ---
    Tool("set_thermostat", "Set the thermostat.", "thermostat", "home",
         [P("temperature", "float", "Target temperature", decimal(16, 28, 1)),
          P("room", "string", "Room", pick(ROOMS), required=False),
          UNIT],
         [("Set the thermostat to {temperature} degrees.", {}),
          ("Make the {room} {temperature} degrees {unit}.", {}),
          ("Heat the {room} to {temperature}.", {})]),
    Tool("control_lights", "Switch or dim the lights.", "lights", "home",
         [P("room", "string", "Room", pick(ROOMS)),
          P("on", "boolean", "On or off"),
          P("brightness", "integer", "Percent", integer(10, 100, 10), required=False)],
         [("Turn on the lights in the {room}.", {"on": True}),
          ("Switch off the {room} lights.", {"on": False}),
          ("Dim the {room} lights to {brightness} percent.", {"on": True}),
          ("Lights off in the {room}, please.", {"on": False})]),
    # --- food ---
    Tool("find_restaurants", "Find restaurants nearby.", "restaurants", "food",
         [P("city", "string", "City", pick(CITIES)),
          P("cuisine", "string", "Cuisine", pick(CUISINES), required=False, enum=CUISINES),
          P("price_level", "integer", "1 (cheap) to 4 (fancy)", integer(1, 4), required=False)],
         [("Find {cuisine} restaurants in {city}.", {}),
          ("Where can I eat in {city}?", {}),
          ("Any {cuisine} places in {city} at price level {price_level}?", {})]),
    Tool("find_recipe", "Find a recipe.", "recipe", "food",
         [P("dish", "string", "Dish", pick(FOODS)),
          P("ingredients", "array", "Must use", sample_of(INGREDIENTS, 1, 3), required=False, items="string"),
          P("max_minutes", "integer", "Time limit", integer(10, 90, 5), required=False)],
         [("Give me a recipe for {dish}.", {}),
          ("How do I make {dish} with {ingredients}?", {}),
          ("I want a {dish} recipe ready in {max_minutes} minutes.", {})]),
    # --- news, translation, sports ---
    Tool("get_headlines", "Top news headlines.", "news", "news",
         [P("topic", "string", "Topic", pick(TOPICS), enum=TOPICS),
          P("limit", "integer", "How many", integer(3, 15), required=False, default=5)],
         [("What's new in {topic}?", {}),
          ("Show me the top {limit} {topic} headlines.", {}),
          ("Any {topic} news today?", {})]),
    Tool("translate_text", "Translate text.", "translate", "news",
         [P("text", "string", "Text", pick(PHRASES)),
          P("target_language", "string", "Language", pick(LANGUAGES), enum=LANGUAGES)],
         [("Translate '{text}' into {target_language}.", {}),
          ("How do you say '{text}' in {target_language}?", {}),
          ("Put '{text}' in {target_language} for me.", {})]),
    Tool("get_match_score", "Score of a sports match.", "sports", "news",
         [P("home_team", "string", "Home team", pick(TEAMS)),
          P("away_team", "string", "Away team", pick(TEAMS)),
          P("date", "string", "Date, YYYY-MM-DD", months_date, required=False)],
         [("What was the score of {home_team} vs {away_team}?", {}),
          ("Did the {home_team} beat the {away_team} on {date}?", {}),
          ("Result of {home_team} against {away_team}, please.", {})]),
]
TOOLS_BY_NAME = {t.name: t for t in TOOLS}

# Default category mix (config: pool.builtin.mix). Single calls are easy for a tiny model, parallel calls and
# no-call cases are hard (STACK.md), which is where model-aware selection has something to do.
CATEGORY_WEIGHTS = {"simple": 0.2, "multiple": 0.35, "parallel": 0.15, "parallel_multiple": 0.15, "irrelevance": 0.15}
CONNECTIVES = ["Also, ", "And ", "Then ", "Plus, ", "After that, "]
ORDINALS = ["First", "Second", "Third", "Fourth"]
COUNTS = {2: "Two", 3: "Three", 4: "Four"}

SLOT = re.compile(r"\{([\w.]+)\}")


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------
def _surface(value: Any) -> str:
    """How a value appears in the request text."""
    if isinstance(value, list):
        items = [str(v) for v in value]
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return str(value)


@dataclass
class _Call:
    tool: Tool
    template: int
    args: dict[str, Any]
    text: str

    def key(self) -> tuple:
        return (self.tool.name, self.template, repr(sorted(self.args.items())))


def _draw_call(rng: random.Random, tool: Tool, avoid: dict[str, Any] | None = None) -> _Call:
    """One request for `tool`: a random template, fresh slot values, the exact arguments it implies."""
    t_idx = rng.randrange(len(tool.templates))
    text, fixed = tool.templates[t_idx]
    slots = SLOT.findall(text)
    used = {s.split(".")[0] for s in slots}
    params = {p.name: p for p in tool.params}
    args: dict[str, Any] = {}
    for p in tool.params:  # schema order, so rendered calls are stable
        if p.name in fixed:
            args[p.name] = fixed[p.name]
        elif p.name in used:
            if p.props:
                args[p.name] = {q.name: q.gen(rng) for q in p.props}
            else:
                args[p.name] = p.gen(rng)
    if tool.fixup is not None:
        tool.fixup(rng, args)
    # two-endpoint tools (from/to, origin/destination, home/away) must not get the same value twice
    for a, b in (("from_currency", "to_currency"), ("origin", "destination"), ("start", "end"),
                 ("home_team", "away_team"), ("from_unit", "to_unit")):
        while a in args and b in args and args[a] == args[b]:
            args[b] = params[b].gen(rng)
    if avoid is not None and args == avoid:  # parallel calls must differ
        return _draw_call(rng, tool, avoid)

    def fill(m: re.Match) -> str:
        head, *rest = m.group(1).split(".")
        value = args[head]
        for part in rest:
            value = value[part]
        return _surface(value)

    return _Call(tool, t_idx, args, SLOT.sub(fill, text))


def _truth_entry(call: _Call) -> dict[str, dict[str, list[Any]]]:
    """Exact arguments, plus optional params with a default the request did not mention: may be left out
    ("" first) or given as the default (BFCL possible-answer convention)."""
    params: dict[str, list[Any]] = {}
    for p in call.tool.params:
        if p.name in call.args:
            params[p.name] = [_acceptable(call.args[p.name])]  # dicts: acceptable lists per key (BFCL)
        elif not p.required and p.default is not None:
            params[p.name] = ["", p.default]
    return {call.tool.name: params}


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:]


def _join(rng: random.Random, texts: list[str]) -> str:
    """Several requests as one message, in one of a few styles (plain, connectives, enumerated, counted)."""
    style = rng.randrange(4)
    if style == 0:
        return " ".join(texts)
    if style == 1:
        return texts[0] + "".join(" " + rng.choice(CONNECTIVES) + _lower_first(t) for t in texts[1:])
    if style == 2:
        return " ".join(f"{ORDINALS[i]}: {t}" for i, t in enumerate(texts))
    return f"{COUNTS[len(texts)]} things. " + " ".join(texts)


def _distractors(rng: random.Random, exclude_groups: set[str], n: int, prefer_domain: str | None = None,
                 tools: list[Tool] = TOOLS) -> list[Tool]:
    """n other tools, none from the excluded capability groups; half of the time from the same domain first
    (harder to tell apart)."""
    others = [t for t in tools if t.group not in exclude_groups]
    chosen: list[Tool] = []
    if prefer_domain and rng.random() < 0.5:
        same = [t for t in others if t.domain == prefer_domain]
        chosen = rng.sample(same, min(len(same), n))
    rest = [t for t in others if t not in chosen]
    chosen += rng.sample(rest, n - len(chosen))
    return chosen


def _make(rng: random.Random, category: str, tools: list[Tool] = TOOLS) -> tuple[list[Tool], list[_Call], list[_Call], str]:
    """(offered tools, expected calls, requested calls, request text) for one sample of `category`. For
    irrelevance the request is for a tool that is not offered: expected [] but one requested call (it still counts
    for the held-out leak check)."""
    if category in ("simple", "multiple", "irrelevance"):
        tool = rng.choice(tools)
        call = _draw_call(rng, tool)
        if category == "simple":
            return [tool], [call], [call], call.text
        if category == "multiple":
            offered = [tool] + _distractors(rng, {tool.group}, rng.randint(2, 4), tool.domain, tools)
            rng.shuffle(offered)
            return offered, [call], [call], call.text
        offered = _distractors(rng, {tool.group}, rng.randint(1, 4), tool.domain, tools)
        return offered, [], [call], call.text
    if category == "parallel":
        tool = rng.choice(tools)
        calls = [_draw_call(rng, tool)]
        for _ in range(rng.choice([1, 1, 2])):
            calls.append(_draw_call(rng, tool, avoid=calls[-1].args))
        return [tool], calls, calls, _join(rng, [c.text for c in calls])
    # parallel_multiple: 2 different tools (sometimes 3), each called once, among 3–5 candidates
    n_tools = rng.choice([2, 2, 3])
    picked: list[Tool] = []
    for t in rng.sample(tools, len(tools)):
        if all(t.group != p.group for p in picked):
            picked.append(t)
        if len(picked) == n_tools:
            break
    calls = [_draw_call(rng, t) for t in picked]
    n_offered = rng.randint(3, 5 if n_tools == 2 else 4)  # keeps the longest prompts under ~500 tokens
    offered = picked + _distractors(rng, {t.group for t in picked}, n_offered - n_tools, picked[0].domain, tools)
    rng.shuffle(offered)
    return offered, calls, calls, _join(rng, [c.text for c in calls])


def _generate(rng: random.Random, n: int, split: str, banned: set[tuple], seen: set[tuple],
              mix: dict[str, float], tools: list[Tool] = TOOLS) -> tuple[list[Sample], set]:
    categories = [c for c in mix if mix[c] > 0]
    weights = [mix[c] for c in categories]
    schemas = {t.name: t.schema() for t in TOOLS}
    samples: list[Sample] = []
    keys: set[tuple] = set()
    attempts = 0
    while len(samples) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"default pool: could not draw {n} distinct {split} samples")
        category = rng.choices(categories, weights)[0]
        offered, calls, requested, text = _make(rng, category, tools)
        call_keys = {c.key() for c in requested}
        dedupe = (text, tuple(t.name for t in offered))
        if call_keys & banned or dedupe in seen:
            continue
        seen.add(dedupe)
        keys |= call_keys
        samples.append(Sample(
            id=f"builtin-{split}-{len(samples):05d}",
            tools=[schemas[t.name] for t in offered],
            messages=[{"role": "user", "content": text}],
            truth=[_truth_entry(c) for c in calls],
            category=category,
            source=f"builtin/{category}",
        ))
    return samples, keys


DOMAINS = sorted({t.domain for t in TOOLS})


def tools_of(domains: list[str] | None) -> list[Tool]:
    """The catalogue's tools of `domains` (all of them for none/empty); an unknown domain is a ConfigError."""
    if not domains:
        return TOOLS
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown:
        raise ConfigError(f"built-in pool: unknown domains {unknown}; the catalogue has {DOMAINS}")
    return [t for t in TOOLS if t.domain in set(domains)]


def natural_samples(seed: int, domains: list[str], mix: dict[str, float] | None = None) -> Iterator[Sample]:
    """Endless samples of the catalogue's `domains` (the base model's share of natural requests), drawn afresh."""
    tools = tools_of(domains)
    mix = dict(CATEGORY_WEIGHTS if mix is None else mix)
    rng = random.Random(f"natural-{seed}")
    schemas = {t.name: t.schema() for t in tools}
    categories, weights = list(mix), list(mix.values())
    index = 0
    while True:
        category = rng.choices(categories, weights)[0]
        offered, calls, _, text = _make(rng, category, tools)
        yield Sample(id=f"natural-{index:07d}", tools=[schemas[t.name] for t in offered],
                     messages=[{"role": "user", "content": text}], truth=[_truth_entry(c) for c in calls],
                     category=category, source=f"natural/{category}")
        index += 1


def generate_pool(n_train: int, n_heldout: int, seed: int = 0,
                  mix: dict[str, float] | None = None,
                  domains: list[str] | None = None) -> tuple[list[Sample], list[Sample]]:
    """(train, heldout): deterministic for a seed; heldout does not depend on n_train; no train call repeats a
    held-out (tool, template, arguments) combination and no request text is repeated with the same tools.
    `mix` weighs the categories (default CATEGORY_WEIGHTS)."""
    mix = dict(CATEGORY_WEIGHTS if mix is None else mix)
    unknown = sorted(set(mix) - set(CATEGORY_WEIGHTS))
    if unknown or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ConfigError(f"pool.builtin.mix = {mix}: expected non-negative weights, not all zero, for categories "
                          f"among {list(CATEGORY_WEIGHTS)}" + (f"; unknown {unknown}" if unknown else ""))
    seen: set[tuple] = set()
    tools = tools_of(domains)
    heldout, held_keys = _generate(random.Random(f"heldout-{seed}"), n_heldout, "heldout", set(), seen, mix, tools)
    train, _ = _generate(random.Random(f"train-{seed}"), n_train, "train", held_keys, seen, mix, tools)
    return train, heldout
