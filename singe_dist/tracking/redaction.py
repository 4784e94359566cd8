"""What may be written to MLflow: secrets removed, values cut to MLflow's length limits.

A job's config can carry credentials (a password in a tracking or database URI, a token in a shard
URL), and MLflow shows params, tags and error texts to anyone who can read the experiment. So every
value the tracker sends, and every error it words, passes through here first.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_PARAM_LENGTH = 6000  # MLflow refuses longer param values
MAX_TAG_LENGTH = 5000  # and longer tag values
REDACTED = "<redacted>"

_SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential"
                         r"|auth|session[_-]?key|signature)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@:\s]*):(?P<pw>[^/@\s]+)@")
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<key>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")
_TOKEN_LIKE = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}|dapi[0-9a-f]{16,}"
                         r"|sk-[A-Za-z0-9_\-]{16,}|xox[abposr]-[A-Za-z0-9\-]{10,}|(?:AKIA|ASIA)[A-Z0-9]{16}"
                         r"|hf_[A-Za-z0-9]{20,}|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]+)")


def redact(text: str) -> str:
    """``text`` with credentials removed: URL passwords, secret query parameters, well-known token formats."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _QUERY_PARAM.sub(lambda m: f"{m['sep']}{m['key']}={REDACTED}" if m["value"] and is_secret_key(m["key"])
                            else m[0], text)
    return _TOKEN_LIKE.sub(REDACTED, text)


def is_secret_key(key: str) -> bool:
    """A key whose value is a secret by its name (``...password``, ``...token``, ``sig``...)."""
    name = key.rsplit(".", 1)[-1]
    return bool(_SECRET_KEY.search(name)) or name.lower() in ("sig", "pwd", "key")


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    text = redact(text)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def safe_params(params: dict[str, Any]) -> dict[str, str]:
    """MLflow params: string values of at most 6000 characters; secret keys dropped, secret values redacted."""
    return {key: _param_value(value) for key, value in params.items() if not is_secret_key(key)}


def tag_value(value: Any) -> str:
    """A tag value on one line (whitespace runs become one space), redacted, at most 5000 characters."""
    text = redact(" ".join(str(value).split()))
    return text if len(text) <= MAX_TAG_LENGTH else text[: MAX_TAG_LENGTH - 3] + "..."


def short_error(exc: BaseException) -> str:
    """An exception as one redacted line of at most 300 characters, for the one-line errors and warnings."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = redact(text)
    return text if len(text) <= 300 else text[:297] + "..."


__all__ = ["MAX_PARAM_LENGTH", "MAX_TAG_LENGTH", "REDACTED", "is_secret_key", "redact", "safe_params",
           "short_error", "tag_value"]
