"""Text → entities and relations through an OpenAI-compatible chat model (the ``extract`` operation).

The answer is validated against :class:`Extraction` before it is returned;
invalid output raises ``UpstreamError(code="invalid_extraction")`` and nothing
is written. :func:`normalise_name` is the key the engine uses to de-duplicate
extracted entities against existing records.
"""

from __future__ import annotations

from engramdb.extract.llm import INVALID_EXTRACTION, SYSTEM_PROMPT, ChatExtractor, parse_json_object
from engramdb.extract.schema import ExtractedEntity, ExtractedRelation, Extraction, normalise_name

__all__ = [
    "INVALID_EXTRACTION",
    "SYSTEM_PROMPT",
    "ChatExtractor",
    "ExtractedEntity",
    "ExtractedRelation",
    "Extraction",
    "normalise_name",
    "parse_json_object",
]
