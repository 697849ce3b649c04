"""The server proving on `/health` that it holds the key, without the key ever being sent.

A client that starts `muse serve` itself (`muse run`'s engine process) sends a fresh random
challenge in the `X-Muse-Challenge` header; a server with a key answers `proof`, the
HMAC-SHA256 of the challenge under the key. Anything else listening on that port (another
local user who took it while the child restarted) cannot answer it, so the client sends it
nothing: not a prompt, not the key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

CHALLENGE_HEADER = "X-Muse-Challenge"
MAX_CHALLENGE_CHARS = 128
_CONTEXT = b"muse-serve-health:"  # a signature made for this use is good for no other


def health_proof(key: str, challenge: str) -> str:
    """The answer to `challenge` under `key`, as hex."""
    message = _CONTEXT + challenge.encode("utf-8", "surrogateescape")
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def proves(answer: Any, key: str, challenge: str) -> bool:
    """True when the JSON `answer` of `/health` carries the right proof for `challenge`."""
    proof = answer.get("proof") if isinstance(answer, dict) else None
    if not isinstance(proof, str):
        return False
    return hmac.compare_digest(proof.encode(), health_proof(key, challenge).encode())
