"""What every rank needs around its role, none of it MPI: the watchdog, preemption signals,
logs, progress lines, the run directory, crash-safe files, run limits, thread budget,
OS process probes and the faults tests inject on purpose."""
