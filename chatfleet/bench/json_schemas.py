"""Ten JSON schemas of the kinds structured-output clients send, each with a prompt and one
valid instance: nested objects, arrays, enums, bounded numbers, required and optional fields.
Every string, array and number is bounded (numbers by a `multipleOf` that is a power of two,
exact in floating point, else a model may write digits until max_tokens), so a valid reply
fits the workloads' token budgets.

The `json-schema` serving workload sends one per request (round robin), the grammar benchmark
walks the tokens of each instance, and the tests check generations against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SchemaCase:
    name: str
    prompt: str
    schema: dict[str, Any]
    example: dict[str, Any]  # one instance the schema accepts


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
    }


_STR = {"type": "string", "maxLength": 40}

SCHEMAS: tuple[SchemaCase, ...] = (
    SchemaCase(
        "person",
        "Describe a fictional person.",
        _obj(
            {
                "name": _STR,
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "email": _STR,
            },
            ["name", "age"],
        ),
        {"name": "Ada Lovelace", "age": 36},
    ),
    SchemaCase(
        "weather",
        "Report the weather in a city.",
        _obj(
            {
                "city": _STR,
                "temperature_c": {
                    "type": "number",
                    "minimum": -90,
                    "maximum": 60,
                    "multipleOf": 0.5,
                },
                "conditions": {"enum": ["sunny", "cloudy", "rain", "snow", "fog"]},
            }
        ),
        {"city": "Paris", "temperature_c": 18.5, "conditions": "cloudy"},
    ),
    SchemaCase(
        "shopping_list",
        "Write a short shopping list.",
        _obj(
            {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 5,
                    "items": _obj(
                        {"item": _STR, "quantity": {"type": "integer", "minimum": 1, "maximum": 20}}
                    ),
                }
            }
        ),
        {"items": [{"item": "apples", "quantity": 3}, {"item": "milk", "quantity": 1}]},
    ),
    SchemaCase(
        "book",
        "Describe a book you like.",
        _obj(
            {
                "title": _STR,
                "author": _obj({"first": _STR, "last": _STR}),
                "year": {"type": "integer", "minimum": 1400, "maximum": 2030},
                "genres": {"type": "array", "items": _STR, "maxItems": 3},
            },
            ["title", "author", "year"],
        ),
        {"title": "Dune", "author": {"first": "Frank", "last": "Herbert"}, "year": 1965},
    ),
    SchemaCase(
        "sentiment",
        "Classify the sentiment of: 'The food was great but the service was slow.'",
        _obj(
            {
                "label": {"enum": ["positive", "negative", "mixed", "neutral"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25},
            }
        ),
        {"label": "mixed", "confidence": 0.75},
    ),
    SchemaCase(
        "event",
        "Plan a meeting.",
        _obj(
            {
                "title": _STR,
                "attendees": {"type": "array", "items": _STR, "minItems": 1, "maxItems": 4},
                "duration_minutes": {"type": "integer", "minimum": 15, "maximum": 240},
                "online": {"type": "boolean"},
            }
        ),
        {"title": "Sync", "attendees": ["Kim"], "duration_minutes": 30, "online": True},
    ),
    SchemaCase(
        "address",
        "Give a postal address.",
        _obj(
            {
                "street": _STR,
                "city": _STR,
                "postcode": {"type": "string", "pattern": "^[0-9]{5}$"},
                "country": {"enum": ["FR", "DE", "US", "JP"]},
            }
        ),
        {"street": "1 Rue de Rivoli", "city": "Paris", "postcode": "75001", "country": "FR"},
    ),
    SchemaCase(
        "recipe",
        "Give a simple recipe.",
        _obj(
            {
                "dish": _STR,
                "servings": {"type": "integer", "minimum": 1, "maximum": 12},
                "steps": {"type": "array", "items": _STR, "minItems": 1, "maxItems": 4},
                "vegetarian": {"type": "boolean"},
            },
            ["dish", "steps"],
        ),
        {"dish": "Omelette", "steps": ["Beat eggs", "Cook"]},
    ),
    SchemaCase(
        "order",
        "Create an order for a customer.",
        _obj(
            {
                "order_id": {"type": "integer", "minimum": 1, "maximum": 99999},
                "customer": _obj({"name": _STR, "vip": {"type": "boolean"}}),
                "total": {"type": "number", "minimum": 0, "maximum": 10000, "multipleOf": 0.25},
                "status": {"enum": ["new", "paid", "shipped"]},
            }
        ),
        {"order_id": 7, "customer": {"name": "Lee", "vip": False}, "total": 19.75, "status": "new"},
    ),
    SchemaCase(
        "rating",
        "Rate a movie from 1 to 5 with a short reason.",
        _obj(
            {
                "movie": _STR,
                "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                "reason": _STR,
                "tags": {
                    "type": "array",
                    "items": {"enum": ["funny", "sad", "long", "classic"]},
                    "maxItems": 3,
                },
            },
            ["movie", "stars"],
        ),
        {"movie": "Up", "stars": 5, "tags": ["funny", "sad"]},
    ),
)
