"""The JSON documents edgebn writes and reads: docs/reference/json.md gives their shapes.

``to_json()`` returns a :data:`JsonDict`; a value read from a document is a :data:`JsonValue`
until it has been checked (:mod:`edgebn.pipeline.report_read`).
"""

from typing import Any

JsonValue = Any  # what json.loads returns: a dict, list, str, int, float, bool or None
JsonDict = dict[str, Any]  # a JSON object, as to_json() returns it
