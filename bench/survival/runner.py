"""Run the leave.py matrix (or, with --probe spawn, the spawn.py one) for one MPI.

usage: runner.py TAG PYTHON 'LAUNCH1' ['LAUNCH2' ...] [--modes 1,2] [--ends A,B,C] [--probe spawn]
LAUNCH is a shell-ish string of the mpiexec command prefix WITHOUT -n (e.g. '/x/mpiexec -disable-auto-cleanup').
Appends JSON lines to results_TAG.jsonl, raw logs in logs/TAG/.
--probe spawn: leave modes 0,1,5, spawn from group and self, ends exit and finalize (spawn.py);
records per process (R0 shard, R1 lead, C the spawned one) the steps passed and the first that
failed, hung or never returned.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time

from spawn_matrix import kill_leftovers, leftovers_of  # this folder, as spawn_hosts.py imports it

HERE = os.path.dirname(os.path.abspath(__file__))
N = 3
TIMEOUT = 20

args = sys.argv[1:]
modes = list(range(0, 9))
ends = ["A", "B", "C"]
if "--modes" in args:
    i = args.index("--modes")
    modes = [int(x) for x in args[i + 1].split(",")]
    del args[i : i + 2]
if "--ends" in args:
    i = args.index("--ends")
    ends = args[i + 1].split(",")
    del args[i : i + 2]
probe = "leave"
if "--probe" in args:
    i = args.index("--probe")
    probe = args[i + 1]
    del args[i : i + 2]
tag, py, launches = args[0], args[1], args[2:]
os.makedirs(f"{HERE}/logs/{tag}", exist_ok=True)


leftovers = leftovers_of(tag)


if probe == "spawn":
    from spawn_matrix import run_spawn_matrix

    run_spawn_matrix(HERE, tag, py, launches, modes if "--modes" in sys.argv else [0, 1, 5], leftovers)
    sys.exit(0)

for li, launch in enumerate(launches):
    for mode in modes:
        for end in ends:
            cmd = (
                ["timeout", "-k", "2", str(TIMEOUT)]
                + shlex.split(launch)
                + ["-n", str(N), py, f"{HERE}/leave.py", str(mode), end, f"runtag={tag}"]
            )
            t = time.time()
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            dt = time.time() - t
            out = p.stdout.decode(errors="replace")
            time.sleep(0.3)
            left = kill_leftovers(leftovers)
            surv = {}
            for r in range(N - 1):
                stages = [x.replace("TRY ", "in:") for x in re.findall(rf"\] R{r} (TRY \w+|\w+)", out)]
                surv[r] = stages
            completed = all("P2P_DONE" in surv[r] for r in surv)
            exited = all(("PYEXIT" if end != "C" else "OS_EXIT") in surv[r] for r in surv)
            last = {r: (surv[r][-1] if surv[r] else None) for r in surv}
            errs = sorted(set(re.findall(r"R\d ERR (\w+)", out)))
            rec = dict(
                tag=tag,
                launch=launch,
                li=li,
                mode=mode,
                end=end,
                rc=p.returncode,
                secs=round(dt, 1),
                hang=p.returncode in (124, 137),
                completed=completed,
                exited=exited,
                last=last,
                errs=errs,
                leftovers=len(left),
                cmd=" ".join(shlex.quote(c) for c in cmd),
            )
            with open(f"{HERE}/logs/{tag}/L{li}_m{mode}_{end}.log", "w") as f:
                f.write(rec["cmd"] + "\n" + out + f"\n# rc={p.returncode} secs={dt:.1f} leftovers={left}\n")
            with open(f"{HERE}/results_{tag}.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(
                f"L{li} m{mode} {end}: rc={p.returncode} {dt:.1f}s completed={completed} exited={exited} "
                f"last={last} errs={errs} left={len(left)}",
                flush=True,
            )
