"""The backend's shared HTTP pieces: the error type, JSON answers, and the parsing of
query and JSON-body parameters.

Both the plugin's routes (``aevis_plugin``) and the contribution route
(``contribution_service``) build on this module and on nothing of each other, so an
error raised anywhere below a route reaches the response once, as an :class:`HttpError`.
(The answer cache is ``bounded_cache``.) Imports neither torch nor scipy.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from tensorboard.backend import http_util
from werkzeug import wrappers

from tensorboard_plugin_aevis.analysis import METHODS

JSON_TYPE = "application/json"
MAX_STRING_PARAM = 1024


class HttpError(Exception):
    """An answer to a request that cannot be served: ``status`` (4xx, or 503 when busy)
    and a message naming the problem and the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------- answers
def json_text(value: Any) -> str:
    """JSON with ``<``, ``>``, ``&`` escaped too, so no user string can read as markup;
    non-finite numbers (possible in a hand-edited logdir) become null."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(value), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_response(request: wrappers.Request, value: Any, status: int = 200, headers=None):
    """``value`` as an escaped JSON answer (see :func:`json_text`)."""
    return http_util.Respond(request, json_text(value), JSON_TYPE, code=status, headers=headers)


def error_response(request: wrappers.Request, status: int, message: str):
    """The JSON error answer ``{"error": message}``."""
    return json_response(request, {"error": message}, status)


def shown(value: str, limit: int = 60) -> str:
    """A user string for an error message (shortened; JSON escaping happens on output)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


# ----------------------------------------------------------------- query parameters
class Params:
    """Validated access to a request's query parameters; every failure is an HttpError(400)."""

    def __init__(self, args):
        self._args = args

    def string(self, name: str, default: Optional[str] = None) -> str:
        values = self._args.getlist(name)
        if not values:
            if default is not None:
                return default
            raise HttpError(400, f"missing parameter {name!r}: add ?{name}=... to the request")
        if len(values) > 1:
            raise HttpError(400, f"parameter {name!r} given {len(values)} times; give it once")
        value = values[0]
        if len(value) > MAX_STRING_PARAM:
            raise HttpError(400, f"parameter {name!r} is longer than {MAX_STRING_PARAM} characters")
        if "\x00" in value:
            raise HttpError(400, f"parameter {name!r} contains a NUL character")
        return value

    def integer(self, name: str, default: Optional[int] = None, lo: int = -(2**63), hi: int = 2**63 - 1) -> int:
        raw = self.string(name, None if default is None else str(default))
        text = raw.strip()
        if not (text.lstrip("-").isdigit() and text.lstrip("-").isascii() and len(text) <= 20):
            raise HttpError(400, f"parameter {name!r} must be an integer, got {shown(raw)}")
        value = int(text)
        if not lo <= value <= hi:
            raise HttpError(400, f"parameter {name!r} must be between {lo} and {hi}, got {value}")
        return value

    def integers(self, name: str, default: Optional[Sequence[int]], min_count: int, max_count: int) -> Optional[List[int]]:
        """A comma-separated list of distinct non-negative integers (or ``default``)."""
        if not self._args.getlist(name):
            return None if default is None else list(default)
        raw = self.string(name)
        parts = [p.strip() for p in raw.split(",")] if raw.strip() else []
        if not all(p.isdigit() and p.isascii() and len(p) <= 9 for p in parts):
            raise HttpError(400, f"parameter {name!r} must be comma-separated example indices like 0,1,2, got {shown(raw)}")
        values = [int(p) for p in parts]
        if len(set(values)) != len(values):
            raise HttpError(400, f"parameter {name!r} repeats an index ({shown(raw)}); give each example once")
        if not min_count <= len(values) <= max_count:
            raise HttpError(400, f"parameter {name!r} needs {min_count} to {max_count} indices, got {len(values)}")
        return values

    def method(self) -> str:
        value = self.string("method")
        if value not in METHODS:
            raise HttpError(400, f"parameter 'method' must be one of {', '.join(METHODS)}, got {shown(value)}")
        return value


# ----------------------------------------------------------------- JSON body parameters
class BodyParams:
    """Validated access to the parameters of a JSON request body (a dict); every failure
    is an HttpError(400). A missing parameter, null, an empty string and an empty list
    all mean: the default."""

    def __init__(self, values: Dict[str, Any]):
        self._values = values

    def present(self, name: str) -> bool:
        value = self._values.get(name)
        return value is not None and not (isinstance(value, (str, list, tuple)) and len(value) == 0)

    def raw(self, name: str) -> Any:
        return self._values.get(name)

    def string(self, name: str, default: Optional[str] = None) -> str:
        if not self.present(name):
            if default is None:
                raise HttpError(400, f"missing parameter {name!r}")
            return default
        value = self._values[name]
        if not isinstance(value, str):
            raise HttpError(400, f"parameter {name!r} must be a string, got {type(value).__name__}")
        if len(value) > MAX_STRING_PARAM:
            raise HttpError(400, f"parameter {name!r} is longer than {MAX_STRING_PARAM} characters")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise HttpError(400, f"parameter {name!r} must be one of {', '.join(choices)}, got {value[:40]!r}")
        return value

    def integer(self, name: str, lo: int, hi: int, default: Optional[int] = None) -> int:
        if not self.present(name):
            if default is None:
                raise HttpError(400, f"missing parameter {name!r}")
            return default
        return _integer_value(name, self._values[name], lo, hi)

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        value = self._values.get(name, default)
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and lo <= number <= hi):
            raise HttpError(400, f"parameter {name!r} must be a number between {lo} and {hi}, got {str(value)[:40]!r}")
        return number

    def integers(self, name: str, count: Optional[int] = None) -> Optional[List[int]]:
        """A JSON list of integers or a comma-separated string (``count`` of them when given); None when absent."""
        if not self.present(name):
            return None
        value = self._values[name]
        items = value.split(",") if isinstance(value, str) else value
        numbers: Optional[List[int]] = None
        if isinstance(items, (list, tuple)) and items and not any(isinstance(v, bool) for v in items):
            try:
                numbers = [_integer_value(name, v, -(2**31), 2**31) for v in items]
            except HttpError:
                numbers = None
        if numbers is None or (count is not None and len(numbers) != count):
            want = f"{count} integers" if count else "a list of integers"
            raise HttpError(400, f"parameter {name!r} must be {want} (a JSON list or comma-separated), got {str(value)[:60]!r}")
        return numbers


def _integer_value(name: str, value: Any, lo: int, hi: int) -> int:
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value.strip()) <= 20:
        number = int(value)
    if number is None:
        raise HttpError(400, f"parameter {name!r} must be an integer, got {str(value)[:40]!r}")
    if not lo <= number <= hi:
        raise HttpError(400, f"parameter {name!r} must be between {lo} and {hi}, got {number}")
    return number
