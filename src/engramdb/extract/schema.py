"""The schema an extraction must satisfy before anything is written."""

from __future__ import annotations

import unicodedata
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Punctuation that is part of a name when it ends it ("C#", "AT&T", "100%").
_KEEP_AT_ENDS = frozenset("#%&@*")
_BRACKETS = {")": "(", "]": "[", "}": "{"}
_OPENERS = {v: k for k, v in _BRACKETS.items()}


def _strippable(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P") and ch not in _KEEP_AT_ENDS


def normalise_name(name: str) -> str:
    """The key under which two entity names count as the same entity.

    NFKC-normalises, case-folds, collapses runs of whitespace and strips
    punctuation from both ends ("  The  Beatles. " → "the beatles",
    '"Ada Lovelace"' → "ada lovelace"). Symbols that carry meaning survive
    ("C++", "C#", "AT&T"), and so do brackets that are balanced inside the
    name ("Mercury (planet)").
    """
    text = " ".join(unicodedata.normalize("NFKC", name).casefold().split())
    start, end = 0, len(text)
    while start < end:
        ch = text[start]
        if ch in _OPENERS and _OPENERS[ch] in text[start + 1 : end]:
            break  # an opening bracket that is closed later belongs to the name
        if not _strippable(ch):
            break
        start += 1
    while end > start:
        ch = text[end - 1]
        if ch in _BRACKETS and _BRACKETS[ch] in text[start : end - 1]:
            break
        if not _strippable(ch):
            break
        end -= 1
    return text[start:end].strip()


class ExtractedEntity(BaseModel):
    """A thing the text talks about: a person, organisation, place, concept..."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    name: str = Field(..., min_length=1, description="the entity's name as written in the text")
    type: str = Field(..., min_length=1, description="a short lowercase category such as person, organization, place")
    description: str = Field(default="", description="one sentence about the entity, from the text only")
    attributes: dict[str, Any] = Field(default_factory=dict, description="facts about the entity as key/value pairs")

    @field_validator("name")
    @classmethod
    def _name_has_letters(cls, v: str) -> str:
        # A name of only punctuation normalises to "" and could never be
        # matched or de-duplicated.
        if not normalise_name(v):
            raise ValueError("name must contain at least one letter, digit or symbol besides punctuation")
        return v


class ExtractedRelation(BaseModel):
    """A directed link ``source --relation--> target`` between two extracted entities."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    source: str = Field(..., min_length=1, description="name of the source entity, exactly as in 'entities'")
    relation: str = Field(..., min_length=1, description="a short snake_case verb phrase such as works_at")
    target: str = Field(..., min_length=1, description="name of the target entity, exactly as in 'entities'")
    weight: float = Field(default=1.0, ge=0.0, le=10.0, description="strength or confidence, 0 to 10")


class Extraction(BaseModel):
    """Entities and relations found in one text; every relation joins two listed entities."""

    # Extra keys are ignored rather than rejected: models like to add harmless
    # fields ("confidence", "notes"), while everything we store is checked.
    model_config = ConfigDict(extra="ignore")

    entities: list[ExtractedEntity] = Field(..., description="every entity mentioned in the text")
    relations: list[ExtractedRelation] = Field(default_factory=list, description="relations between those entities")

    @model_validator(mode="after")
    def _relations_join_entities(self) -> Extraction:
        known = {normalise_name(e.name) for e in self.entities}
        for i, rel in enumerate(self.relations):
            for end in ("source", "target"):
                value = getattr(rel, end)
                if normalise_name(value) not in known:
                    raise ValueError(
                        f"relations[{i}].{end} {value!r} is not the name of any entity in 'entities' "
                        "(every relation must join two listed entities)"
                    )
        return self

    def find_entity(self, name: str) -> ExtractedEntity | None:
        """The first entity whose normalised name equals ``name``'s, or ``None``."""
        key = normalise_name(name)
        return next((e for e in self.entities if normalise_name(e.name) == key), None)
