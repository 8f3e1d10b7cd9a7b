"""Peak resident memory: this process's, and the per-role maxima summary.json reports.

Each rank measures its own peak at the end of its run (so it covers everything the rank ever
held) and sends it with the statistics that already reach the lead; the lead keeps the
largest per role: {"coordinator": ..., "shard": ..., "replica": ...} in bytes.
"""

import resource
import sys

ROLES = ("coordinator", "shard", "replica")  # the order of max_to_root's vector (comm/world.py)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def resident_now() -> str:
    """This process's resident memory now by kind, from /proc/self/status (Linux; '' elsewhere):
    anonymous (private) pages and shared-memory pages (on one node, MPI windows of other ranks
    this rank has read or written count here too)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if line.startswith(("RssAnon", "RssShmem")))
    except OSError:
        return ""
    return ", ".join(f"{key} {value.strip()}" for key, value in fields.items())


def peaks_by_role(records: list[dict]) -> dict[str, int]:
    """{role: the largest 'peak_rss_bytes' among the records of that role}; records without
    one (an older rank's report) are skipped."""
    peaks: dict[str, int] = {}
    for record in records:
        if "peak_rss_bytes" in record:
            role = record["role"]
            peaks[role] = max(peaks.get(role, 0), int(record["peak_rss_bytes"]))
    return peaks


def with_own_peak(peaks: dict[str, int], role: str) -> dict[str, int]:
    """peaks with this process's peak, measured now, counted for `role` (the lead, which keeps
    working after it sent or kept its report: the final fetch, the evaluation)."""
    return {**peaks, role: max(peaks.get(role, 0), peak_rss_bytes())}


def role_vector(role: str) -> list[int]:
    """This rank's peak at its role's place in ROLES, zeros elsewhere (for an element-wise max)."""
    return [peak_rss_bytes() if name == role else 0 for name in ROLES]


def peaks_from_vector(maxima: list[int]) -> dict[str, int]:
    """The element-wise maximum of every rank's role_vector as {role: bytes}, for the roles present."""
    return {name: value for name, value in zip(ROLES, maxima) if value}
