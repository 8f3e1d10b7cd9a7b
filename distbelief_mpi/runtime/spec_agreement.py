"""PURE: what ranks compare to be sure they run the same resolved job spec.

Every rank hashes its `config.spec_items` (the digest) and compares it with rank 0's, so the
check costs each rank one broadcast and one reduction whatever the world size; the items
themselves travel only when some rank differs, to name the keys (train.py does the MPI side).
"""

import hashlib
import json


def spec_digest(items: dict[str, str]) -> str:
    """SHA-256 of the items sorted by key: equal on two ranks exactly when their items are."""
    text = json.dumps(sorted(items.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def differing_keys(reference: dict[str, str], items: dict[str, str]) -> list[str]:
    """The keys whose values differ between two ranks' items (or that only one has), sorted."""
    return sorted(key for key in reference.keys() | items.keys() if reference.get(key) != items.get(key))


def mismatch_message(source: str, reference: dict[str, str], items: dict[str, str]) -> str | None:
    """The error a rank whose items differ from rank 0's (`reference`) gets, or None if equal."""
    differ = differing_keys(reference, items)
    if not differ:
        return None
    shown = ", ".join(f"{key} ({reference.get(key)!r} on rank 0, {items.get(key)!r} here)" for key in differ)
    return f"{source}: the job spec differs between ranks: {shown}"
