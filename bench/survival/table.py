"""Render results_TAG.jsonl as markdown tables. usage: table.py TAG [TAG...]"""

import json
import sys

MODES = {
    0: "0 no leave (control)",
    1: "1 os._exit(0)",
    2: "2 os._exit(3)",
    3: "3 sys.exit(0) (atexit Finalize)",
    4: "4 uncaught exception",
    5: "5 SIGKILL",
    6: "6 SIGTERM",
    7: "7 SIGSTOP (hang)",
    8: "8 MPI.Finalize(); os._exit(0)",
}
NICE = {"UNLOCKED": "Unlock_all", "FREED": "Win.Free", "FINALIZED": "Finalize"}


def cell(r):
    last = list(r["last"].values())
    rc = r["rc"]
    hang = r["secs"] >= 19.5
    if not r["completed"]:
        if hang:
            where = ",".join(sorted(set(str(x) for x in last)))
            return f"✘ stuck ({where}) rc={rc}"
        return f"✘ killed rc={rc}"
    if r["exited"]:
        if hang:
            return f"✔ work, exited; **mpiexec hang** rc={rc}"
        return f"✔ **OK** rc={rc}"
    stuck = sorted(set(NICE.get(x[3:], x[3:]) for x in last if x and x.startswith("in:")))
    other = sorted(set(x for x in last if x and not x.startswith("in:") and x not in ("PYEXIT", "OS_EXIT")))
    if stuck:
        what = ("hang in " if hang else "died in ") + "/".join(stuck)
    else:
        what = "killed after work (" + ",".join(other) + ")"
    return f"◐ work ✔, {what} rc={rc}"


for tag in sys.argv[1:]:
    rows = [json.loads(line) for line in open(f"results_{tag}.jsonl")]
    launches = []
    for r in rows:
        if r["launch"] not in launches:
            launches.append(r["launch"])
    ends = ["A", "B", "C"]
    print(f"\n### {tag}\n")
    for li, launch in enumerate(launches):
        print(f"- L{li}: `{launch} -n 3 ...`")
    print()
    hdr = ["leave mode"] + [f"L{li}/{e}" for li in range(len(launches)) for e in ends]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    modes = sorted(set(r["mode"] for r in rows))
    for m in modes:
        cells = [MODES[m]]
        for launch in launches:
            for e in ends:
                rs = [r for r in rows if r["launch"] == launch and r["mode"] == m and r["end"] == e]
                cells.append(" / ".join(cell(r) for r in rs) if rs else "n/a")
        print("| " + " | ".join(cells) + " |")
