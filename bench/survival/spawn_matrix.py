"""runner.py --probe spawn: run spawn.py for each launch x leave mode x spawn source x end.

One JSON line per run in results_TAG.jsonl: the launcher's exit code, seconds, leftover
processes, and per process (R0 shard, R1 lead, C the spawned one) the steps it passed and how
its first unfinished step ended: "ERR msg", "HUNG after N s", or "no return" (killed in it)."""

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import time

N = 4
TIMEOUT = 30  # spawn.py's own per-step deadline is 15 s (a call that holds the GIL escapes it)
SOURCES, ENDS = ("group", "self"), ("exit", "finalize")
PROCESSES = ("R0", "R1", "C")


def leftovers_of(tag: str):
    """A function listing the pids of processes still running with runtag=TAG (not runners)."""

    def leftovers() -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"runtag={tag}" in cmd and "runner.py" not in cmd and "spawn_hosts.py" not in cmd:
                if not cmd.startswith("timeout"):
                    pids.append(int(entry))
        return pids

    return leftovers


def kill_leftovers(leftovers) -> list[int]:
    """SIGKILL the processes a run left behind (leftovers(): their pids); returns the pids."""
    left = leftovers()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def steps_of(out: str, who: str) -> dict:
    """The steps `who` passed, and its first that did not pass (None: all did)."""
    passed, failed = [], None
    for verb, step, rest in re.findall(rf"\] {who} (TRY|OK|ERR|HUNG) ([a-e]\.[a-z_]+) ?([^\n\[]*)", out):
        if verb == "OK":
            passed.append(step)
        elif verb in ("ERR", "HUNG") and failed is None:
            failed = f"{step}: {verb} {rest}".strip()
    tried = re.findall(rf"\] {who} TRY ([a-e]\.[a-z_]+)", out)
    if failed is None and tried and tried[-1] not in passed:
        failed = f"{tried[-1]}: no return"
    ended = re.search(rf"\] {who} (OS_EXIT|PYEXIT)", out)
    started = re.search(rf"\] {who} START", out)
    if failed is None and started and not ended:
        failed = f"killed after {passed[-1] if passed else 'START'}"
    if not started:
        failed = "not started" if who == "C" and "b.spawn" in out else None
    return {"passed": passed, "failed": failed, "ended": ended.group(1) if ended else None}


def run_one(here: str, tag: str, py: str, launch: str, args: list[str], leftovers) -> dict:
    cmd = ["timeout", "-k", "2", str(TIMEOUT), *shlex.split(launch), "-n", str(N), py, f"{here}/spawn.py"]
    cmd += [*args, f"runtag={tag}"]
    start = time.time()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    seconds = time.time() - start
    time.sleep(0.5)
    left = kill_leftovers(leftovers)
    out = done.stdout.decode(errors="replace")
    return {
        "rc": done.returncode,
        "secs": round(seconds, 1),
        "leftovers": len(left),
        "procs": {who: steps_of(out, who) for who in PROCESSES},
        "rma": re.findall(r"(?:RMA_RESULT|HOST_SEES|OLD_WINDOW|BYSTANDER_OPS) [^\n\[]*", out),
        "cmd": " ".join(shlex.quote(c) for c in cmd),
        "out": out,
    }


def record(here: str, tag: str, name: str, rec: dict) -> None:
    """The raw output to logs/TAG/NAME.log, the record (without it) to results_TAG.jsonl."""
    with open(f"{here}/logs/{tag}/{name}.log", "w") as f:
        f.write(rec["cmd"] + "\n" + rec.pop("out") + f"\n# rc={rec['rc']} secs={rec['secs']}\n")
    rec.update(tag=tag, probe="spawn", log=name)
    with open(f"{here}/results_{tag}.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    fails = {who: p["failed"] for who, p in rec["procs"].items() if p["failed"]}
    print(f"{name}: rc={rec['rc']} {rec['secs']}s left={rec['leftovers']} failed={fails}", flush=True)


def run_spawn_matrix(here: str, tag: str, py: str, launches: list[str], modes: list[int], leftovers) -> None:
    os.makedirs(f"{here}/logs/{tag}", exist_ok=True)
    for (li, launch), mode, source, end in itertools.product(enumerate(launches), modes, SOURCES, ENDS):
        rec = run_one(here, tag, py, launch, [str(mode), source, end], leftovers)
        rec.update(launch=launch, li=li, mode=mode, source=source, end=end)
        record(here, tag, f"L{li}_m{mode}_{source}_{end}", rec)


MODE_NAMES = {
    0: "nobody leaves (control)",
    1: "exits, code 1, no Finalize",
    5: "SIGKILL",
    9: "exits (code 1) during the spawn",
}
STEP_LETTERS = {"a": "create_group", "b": "spawn", "c": "merge", "d": "window + RMA", "e": "end"}


def cell(rec: dict) -> str:
    """One run: the steps every process passed, the first failure, how the job ended."""
    by_failure: dict[str, list[str]] = {}
    for who, p in rec["procs"].items():
        if p["failed"]:
            by_failure.setdefault(p["failed"], []).append(who)
    fails = [f"{','.join(whos)} {failure}" for failure, whos in by_failure.items()]
    ended = f"rc={rec['rc']}, {rec['secs']:g} s" + (f", {rec['leftovers']} left over" if rec["leftovers"] else "")
    if rec["secs"] >= TIMEOUT - 0.5:  # 124: timeout's TERM ended it; -9: it needed the KILL
        ended = f"hung: killed by timeout at {rec['secs']:g} s, rc={rec['rc']}"
    if not fails:
        wrong = any("HOST_SEES word 8 = 2.0" not in line for line in rec["rma"] if line.startswith("HOST_SEES"))
        return f"a-e ✔{' (RMA result wrong)' if wrong else ''}; {ended}"
    passed = sorted({step[0] for p in rec["procs"].values() for step in p["passed"]})
    return f"✘ {'; '.join(fails)} (steps reached: {''.join(passed) or 'none'}; {ended})"


def table(tag: str) -> str:
    with open(f"results_{tag}.jsonl") as f:
        rows = [json.loads(line) for line in f]
    for r in rows:  # steps read again from the raw log: the parser may be newer than the run
        name = r.get("log", f"L{r.get('li')}_m{r['mode']}_{r['source']}_{r['end']}")
        with open(f"logs/{tag}/{name}.log", errors="replace") as f:
            out = f.read()
        r["procs"] = {who: steps_of(out, who) for who in PROCESSES}
    launches = list(dict.fromkeys(r["launch"] for r in rows))
    lines = [f"### {tag}", ""] + [f"- L{i}: `{launch} -n 4 ...`" for i, launch in enumerate(launches)] + [""]
    columns = [(i, source) for i in range(len(launches)) for source in SOURCES]
    lines.append("| leave / end | " + " | ".join(f"L{i} {source}" for i, source in columns) + " |")
    lines.append("|---" * (1 + len(columns)) + "|")
    for mode in sorted({r["mode"] for r in rows}):
        for end in ENDS:
            cells = [
                " / ".join(cell(r) for r in rows if (r["launch"], r["source"], r["mode"], r["end"]) == key)
                for key in ((launches[i], source, mode, end) for i, source in columns)
            ]
            lines.append(f"| {MODE_NAMES.get(mode, mode)} / {end} | " + " | ".join(c or "n/a" for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python spawn_matrix.py TAG [TAG ...]: the markdown tables
    import sys

    print("\n\n".join(table(tag) for tag in sys.argv[1:]))
