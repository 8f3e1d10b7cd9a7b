"""Job spec: TOML -> frozen dataclasses. Every problem is collected and reported at once.

A job spec has seven sections; every key has a default except `data.path`. Unknown
sections and keys, wrong types and impossible values are all listed in one ConfigError
naming the file and the key (`section.key`). `--set section.key=value` overrides
are applied before checking, so they are checked exactly like the file.
"""

import dataclasses
import importlib.util
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .model.plugins import load_plugins
from .model.spec import GRID_WORDS, LayerSpec, parse_grid, parse_layer, spec_entry

ALGORITHMS = ("sgd", "downpour", "sandblaster")
SERVER_RULES = ("adagrad", "sgd")
REPLICA_LOSS = ("abort", "continue", "replace")
TRANSFERS = ("auto", "inline", "pipelined")
INJECTED_FAULTS = ("none", "hang", "freeze", "leave", "slow", "duplicate")
# topology.replicas = "auto" until the world size is known: layout.resolve_topology replaces it
# with the count (an int >= 1) before anything plans or runs, so no other code sees this value.
AUTO_REPLICAS = -1


@dataclass(frozen=True)
class Topology:
    """Which ranks exist: [coordinator] + shards + replicas x partitions."""

    shards: int = 0  # parameter-server shard ranks (0: the replica keeps the parameters)
    replicas: int = 1  # model replicas training in parallel, or "auto": as many as the ranks after coordinator
    # and shards hold, (world size - coordinator - shards) / partitions_per_replica, a whole number >= 1 (sgd: 1
    # rank in all); resolved per launch, so a launch or requeue on another task count gets another count
    # (RUN_DIR/job.toml and the checkpoints record the resolved one); `distbelief plan JOB` lists the sizes that fit
    partitions_per_replica: int = 1  # ranks one replica is split over (model parallelism)
    partition_grid: str = "rows"  # how image layers are cut into the partitions: "rows" (P blocks of whole
    # rows), "AxB" (A x B blocks of rows x columns, A x B = partitions_per_replica) or "auto" (the grid whose
    # busiest partition receives the fewest halo bytes, then the most even blocks; docs/model_parallel.md)
    coordinator: bool = False  # a coordinator rank (Sandblaster)
    threads_per_rank: int = 0  # compute threads per rank; 0: $SLURM_CPUS_PER_TASK or 1


@dataclass(frozen=True)
class Model:
    """Hidden layers; a dense softmax output over the dataset's classes is appended."""

    plugins: tuple[str, ...] = ()  # Python modules imported on every rank before the layers are read: they
    # register their own layer types (docs/custom_layers.md); each must be importable (installed or on PYTHONPATH)
    layers: tuple[LayerSpec, ...] = ()  # hidden layers, input first (types below); [] is softmax regression


@dataclass(frozen=True)
class Optimizer:
    """How parameters are updated."""

    algorithm: str = "sgd"  # sgd: one replica holds the parameters; downpour: async replicas + shards;
    # sandblaster: L-BFGS with a coordinator
    learning_rate: float = 0.05  # step size alpha a replica applies to each minibatch gradient locally
    batch_size: int = 64  # examples per minibatch (per replica)
    server_rule: str = "adagrad"  # downpour: how a shard applies each push: adagrad or sgd (fixed rate)
    server_learning_rate: float = 0.05  # downpour: gamma of adagrad, or the shard's fixed sgd rate
    adagrad_initial_accumulator: float = 0.1  # downpour: starting sum of squared gradients per parameter
    adagrad_epsilon: float = 1e-8  # downpour: added to sqrt(accumulator) in adagrad's denominator
    fetch_every: int = 1  # downpour: a replica fetches fresh parameters every N steps
    push_every: int = 1  # downpour: a replica pushes its accrued gradient every N steps (sandblaster: every N
    # counted portions)
    warmstart_steps: int = 0  # downpour: replica 0 trains alone this many steps before the others start
    max_staleness: int = 0  # downpour: a shard rejects (and counts) pushes staler than this; 0: no bound
    landing_slots: int = 4  # downpour, sandblaster: slots per shard that pushes land in, shared by the replicas
    overlap_comm: bool = False  # downpour: fetch and push in a background thread, overlapping compute
    # (docs/downpour.md)
    transfers: str = "auto"  # downpour: inline (each step's push and fetch complete within it), pipelined
    # (one phase a step, overlapping compute), auto (pipelined for an unpartitioned replica with a shard on
    # another node)
    lbfgs_memory: int = 10  # sandblaster: (s, y) pairs of L-BFGS history, kept on the shards
    sandblaster_batch: int = 0  # sandblaster: examples per L-BFGS batch (0: the whole training split, one batch)
    lbfgs_iterations_per_batch: int = 20  # sandblaster: L-BFGS iterations on one batch before the next (history
    # restarts)
    portion_examples: int = 0  # sandblaster: examples per portion a replica computes (0: about batch / (8 x replicas))
    backup_tasks: bool = True  # sandblaster: near a batch's end, free replicas redo outstanding portions; first
    # result wins
    backup_after: float = 0.0  # sandblaster: backups start once every portion is issued and this fraction is complete
    l2_penalty: float = 0.0  # sandblaster: adds l2_penalty / 2 * |w|^2 to the loss (all parameters), on the shards


@dataclass(frozen=True)
class Data:
    """The dataset; each replica reads its own part of the training split."""

    path: str = ""  # HDF5 dataset (schema in docs/datasets.md), relative to the working directory
    eval_examples: int = 0  # test examples used by periodic evaluations; 0: all (the final one always uses all)
    chunk_examples: int = 0  # 0: load each replica's part into memory; N: stream it N rows at a time, prefetching


@dataclass(frozen=True)
class Checkpoint:
    """Committed checkpoints under RUN_DIR/checkpoints (a manifest written last marks one complete)."""

    every_steps: int = 0  # commit a checkpoint every N steps (0: off)
    every_seconds: float = 0.0  # ... or every S seconds of wall time (0: off)
    keep: int = 2  # complete checkpoints kept; older ones are deleted
    grace_seconds: float = 60.0  # on SIGTERM/SIGUSR1: time allowed to commit the final checkpoint


@dataclass(frozen=True)
class Run:
    """Run limits (the first one reached stops the run; at least one must be set), seed, evaluation."""

    steps: int = 0  # stop after this many minibatch steps (0: no limit)
    epochs: float = 0.0  # ... or after this many passes over the training set (0: no limit)
    seconds: float = 0.0  # ... or after this much wall time of this invocation (0: no limit)
    seed: int = 0  # initialisation and data order
    eval_every: int = 0  # evaluate on the test set every N steps (0: only at the end)
    progress_seconds: float = 10.0  # seconds between the lead's progress lines (0: none); inside a batch job
    # (SLURM_JOB_ID, PBS_JOBID or LSB_JOBID set) batch_progress_seconds applies instead
    batch_progress_seconds: float = 60.0  # ... the same inside a batch job, whose log is read later (0: none)
    tensorboard: bool = False  # the lead also writes loss, accuracy, examples/s and (Downpour) staleness as
    # TensorBoard scalars; needs pip install 'distbelief-mpi[tensorboard]' (docs/guide.md, "Watching a run")
    tensorboard_dir: str = ""  # ... into this folder (relative: to the working directory); "": RUN_DIR/tensorboard


@dataclass(frozen=True)
class Faults:
    """Hung and lost ranks (docs/reliability.md), and faults injected on purpose to test them."""

    watchdog_seconds: float = 300.0  # abort the job, naming the rank, when a rank makes no progress this long (0: off)
    replica_loss: str = "abort"  # downpour: a replica that leaves mid-run: abort, continue without it, or
    # replace it with a spawned process (both need mpiexec -disable-auto-cleanup)
    inject: str = "none"  # testing: none, hang (sleeps forever), freeze (SIGSTOP), leave (exits 1), slow,
    # duplicate (sandblaster: every result sent twice)
    inject_replica: int = 0  # testing: the replica the injected fault hits
    inject_after_steps: int = 10  # testing: ... after this many of its steps (slow: from the start)
    slow_factor: float = 5.0  # testing: inject = slow makes each step take this many times as long


@dataclass(frozen=True)
class JobSpec:
    topology: Topology = field(default_factory=Topology)
    model: Model = field(default_factory=Model)
    optimizer: Optimizer = field(default_factory=Optimizer)
    data: Data = field(default_factory=Data)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    run: Run = field(default_factory=Run)
    faults: Faults = field(default_factory=Faults)
    source: str = "<defaults>"  # the file the spec came from (for messages)


SECTIONS: dict[str, type] = {
    f.name: typing.cast(type, f.type) for f in dataclasses.fields(JobSpec) if f.name != "source"
}


def load_job(path: str | Path, overrides: typing.Sequence[str] = ()) -> JobSpec:
    """Read a TOML job spec, apply `section.key=value` overrides, check everything."""
    path = Path(path)
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(source, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"cannot read the file: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    problems = apply_overrides(raw, overrides)
    return parse_job(raw, source, problems)


def checked_spec(spec: JobSpec) -> JobSpec:
    """A JobSpec built in Python, checked exactly as a job file is: written out as TOML and parsed
    back (types, ranges, layer keys, plugins), so nothing the file route refuses gets through.
    ConfigError naming each problem."""
    return parse_job(tomllib.loads(to_toml(spec)), spec.source)


def apply_overrides(raw: dict, overrides: typing.Sequence[str]) -> list[str]:
    """Set `section.key=value` in raw (in place). Values are TOML; a bare word is a string."""
    problems = []
    for item in overrides:
        name, sep, text = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not section or not key:
            problems.append(f"--set {item!r}: expected section.key=value, e.g. run.steps=100")
            continue
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            problems.append(f"--set {item!r}: [{section}] is not a table in the file")
            continue
        raw[section][key] = _parse_override_value(text.strip())
    return problems


def _parse_override_value(text: str) -> object:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # e.g. data.path=data/digits.h5 needs no quotes


def parse_job(raw: dict, source: str = "<job>", problems: list[str] | None = None) -> JobSpec:
    """Build a JobSpec from a parsed TOML dict; raise ConfigError with every problem."""
    problems = list(problems or [])
    sections = {}
    for name in raw:
        if name not in SECTIONS:
            problems.append(f"[{name}]: unknown section; sections are {sorted(SECTIONS)}")
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{name}: expected a [{name}] table")
            table = {}
        sections[name] = _parse_section(name, cls, table, problems)
    spec = JobSpec(**sections, source=source)
    # Keys that already failed kept their defaults: do not report those twice.
    failed = {p.split(":")[0] for p in problems}
    problems += [p for p in check_values(spec) if p.split(":")[0] not in failed]
    if problems:
        raise ConfigError(source, problems)
    return spec


def _parse_section(name: str, cls: type, table: dict, problems: list[str]):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            problems.append(f"{name}.{key}: unknown key; [{name}] takes {sorted(known)}")
    values: dict[str, typing.Any] = {}
    # plugins first: they register the layer types `layers` may name
    for key in sorted(known & table.keys(), key=lambda k: k != "plugins"):
        if name == "model" and key == "plugins":
            values[key], plugin_problems = load_plugins(table[key])
            problems += plugin_problems
        elif name == "model" and key == "layers":
            values[key] = _parse_layers(table[key], problems)
        elif name == "topology" and key == "replicas":
            values[key] = _parse_replicas(table[key], problems)
        elif _type_ok(table[key], hints[key]):
            values[key] = float(table[key]) if hints[key] is float else table[key]
        else:
            problems.append(f"{name}.{key}: expected {hints[key].__name__}, got {table[key]!r}")
    return cls(**values)


def _parse_replicas(value: object, problems: list[str]) -> int:
    """An int >= 1, or "auto" (AUTO_REPLICAS). Checked here, not in check_values: there a
    written -1 could not be told from "auto"."""
    if value == "auto":
        return AUTO_REPLICAS
    if _type_ok(value, int) and typing.cast(int, value) >= 1:
        return typing.cast(int, value)
    problems.append(f'topology.replicas: must be an int >= 1 or "auto", got {value!r}')
    return 1


def _type_ok(value: object, hint: type) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _parse_layers(entries: object, problems: list[str]) -> tuple[LayerSpec, ...]:
    if not isinstance(entries, list):
        problems.append('model.layers: expected a list of inline tables, e.g. [{ type = "dense", units = 64 }]')
        return ()
    layers = []
    for index, entry in enumerate(entries):
        layer, layer_problems = parse_layer(entry, f"model.layers[{index}]")
        problems += layer_problems
        if layer is not None:
            layers.append(layer)
    return tuple(layers)


def check_values(spec: JobSpec) -> list[str]:
    """Impossible values, each named by its key. Types are already right here."""
    t, o, d, c, r, f = spec.topology, spec.optimizer, spec.data, spec.checkpoint, spec.run, spec.faults
    rules = [
        (t.shards >= 0, "topology.shards", "must be >= 0"),
        (t.replicas >= 1 or t.replicas == AUTO_REPLICAS, "topology.replicas", 'must be >= 1 or "auto"'),
        (t.partitions_per_replica >= 1, "topology.partitions_per_replica", "must be >= 1"),
        (
            _grid_fits(t),
            "topology.partition_grid",
            f'must be "rows", "auto" or "AxB" with A x B = partitions_per_replica = {t.partitions_per_replica}',
        ),
        (t.threads_per_rank >= 0, "topology.threads_per_rank", "must be >= 0 (0: $SLURM_CPUS_PER_TASK or 1)"),
        (o.algorithm in ALGORITHMS, "optimizer.algorithm", f"must be one of {list(ALGORITHMS)}"),
        (o.learning_rate > 0, "optimizer.learning_rate", "must be > 0"),
        (o.batch_size >= 1, "optimizer.batch_size", "must be >= 1"),
        (o.server_rule in SERVER_RULES, "optimizer.server_rule", f"must be one of {list(SERVER_RULES)}"),
        (o.transfers in TRANSFERS, "optimizer.transfers", f"must be one of {list(TRANSFERS)}"),
        (o.server_learning_rate > 0, "optimizer.server_learning_rate", "must be > 0"),
        (o.adagrad_initial_accumulator >= 0, "optimizer.adagrad_initial_accumulator", "must be >= 0"),
        (o.adagrad_epsilon >= 0, "optimizer.adagrad_epsilon", "must be >= 0"),
        (
            o.adagrad_initial_accumulator > 0 or o.adagrad_epsilon > 0,
            "optimizer.adagrad_epsilon",
            "must be > 0 when adagrad_initial_accumulator is 0 (a zero denominator)",
        ),
        (o.fetch_every >= 1, "optimizer.fetch_every", "must be >= 1"),
        (o.push_every >= 1, "optimizer.push_every", "must be >= 1"),
        (o.warmstart_steps >= 0, "optimizer.warmstart_steps", "must be >= 0"),
        (o.max_staleness >= 0, "optimizer.max_staleness", "must be >= 0 (0: no bound)"),
        (o.landing_slots >= 1, "optimizer.landing_slots", "must be >= 1"),
        (o.lbfgs_memory >= 1, "optimizer.lbfgs_memory", "must be >= 1"),
        (o.sandblaster_batch >= 0, "optimizer.sandblaster_batch", "must be >= 0 (0: the whole training split)"),
        (o.lbfgs_iterations_per_batch >= 1, "optimizer.lbfgs_iterations_per_batch", "must be >= 1"),
        (o.portion_examples >= 0, "optimizer.portion_examples", "must be >= 0 (0: automatic)"),
        (0 <= o.backup_after <= 1, "optimizer.backup_after", "must be a fraction in [0, 1]"),
        (o.l2_penalty >= 0, "optimizer.l2_penalty", "must be >= 0"),
        (d.path != "", "data.path", "required: the HDF5 dataset to train on (see docs/datasets.md)"),
        (d.eval_examples >= 0, "data.eval_examples", "must be >= 0"),
        (d.chunk_examples >= 0, "data.chunk_examples", "must be >= 0 (0: load into memory)"),
        (c.every_steps >= 0, "checkpoint.every_steps", "must be >= 0"),
        (c.every_seconds >= 0, "checkpoint.every_seconds", "must be >= 0"),
        (c.keep >= 1, "checkpoint.keep", "must be >= 1"),
        (c.grace_seconds > 0, "checkpoint.grace_seconds", "must be > 0"),
        (r.steps >= 0, "run.steps", "must be >= 0"),
        (r.epochs >= 0, "run.epochs", "must be >= 0"),
        (r.seconds >= 0, "run.seconds", "must be >= 0"),
        (r.steps or r.epochs or r.seconds, "run", "set at least one limit: run.steps, run.epochs or run.seconds"),
        (r.seed >= 0, "run.seed", "must be >= 0"),
        (r.eval_every >= 0, "run.eval_every", "must be >= 0"),
        (r.progress_seconds >= 0, "run.progress_seconds", "must be >= 0 (0: no progress line)"),
        (r.batch_progress_seconds >= 0, "run.batch_progress_seconds", "must be >= 0 (0: no progress line)"),
        (
            not r.tensorboard or importlib.util.find_spec("tensorboard") is not None,
            "run.tensorboard",
            "needs the tensorboard package: pip install 'distbelief-mpi[tensorboard]'",
        ),
        (f.watchdog_seconds >= 0, "faults.watchdog_seconds", "must be >= 0 (0: off)"),
        (f.replica_loss in REPLICA_LOSS, "faults.replica_loss", f"must be one of {list(REPLICA_LOSS)}"),
        (f.inject in INJECTED_FAULTS, "faults.inject", f"must be one of {list(INJECTED_FAULTS)}"),
        (f.inject == "none" or _names_a_replica(f.inject_replica, t), "faults.inject_replica", _replica_range(t)),
        (f.inject_after_steps >= 0, "faults.inject_after_steps", "must be >= 0"),
        (
            f.replica_loss == "abort" or o.algorithm == "downpour",
            "faults.replica_loss",
            f"{f.replica_loss} is for optimizer.algorithm = downpour (sgd has one replica; sandblaster's coordinator "
            "cannot finish a pass without a replica that left)",
        ),
        (
            not f.watchdog_seconds or f.watchdog_seconds > c.grace_seconds,
            "faults.watchdog_seconds",
            f"must be 0 or more than checkpoint.grace_seconds = {c.grace_seconds:g} (a preempted lead pushes "
            "nothing while it commits its final checkpoint)",
        ),
        (
            f.replica_loss == "abort" or t.partitions_per_replica == 1,
            "faults.replica_loss",
            f"{f.replica_loss} needs unpartitioned replicas (the partitions of a replica wait for each other "
            "every step)",
        ),
        (f.slow_factor >= 1, "faults.slow_factor", "must be >= 1"),
    ]
    return [f"{key}: {message}, got {_value_of(spec, key)}" for ok, key, message in rules if not ok]


def _names_a_replica(replica: int, t: Topology) -> bool:
    """With replicas = "auto" only the lower bound is known here; resolve_topology checks again."""
    return 0 <= replica and (replica < t.replicas or t.replicas == AUTO_REPLICAS)


def _replica_range(t: Topology) -> str:
    if t.replicas == AUTO_REPLICAS:
        return 'must name a replica, 0 or more (topology.replicas = "auto")'
    return f"must name a replica, 0 to topology.replicas - 1 = {t.replicas - 1}"


def _grid_fits(t: Topology) -> bool:
    grid = parse_grid(t.partition_grid)
    return t.partition_grid in GRID_WORDS if grid is None else grid[0] * grid[1] == t.partitions_per_replica


def _value_of(spec: JobSpec, key: str) -> str:
    section, _, name = key.partition(".")
    if not name:
        return "none set"
    return repr(_key_value(spec, section, name))


def _key_value(spec: JobSpec, section: str, name: str) -> object:
    """The key's value as the user writes it: "auto" for AUTO_REPLICAS."""
    value = getattr(getattr(spec, section), name)
    return "auto" if (section, name, value) == ("topology", "replicas", AUTO_REPLICAS) else value


def spec_items(spec: JobSpec) -> dict[str, str]:
    """{"section.key": value as TOML text} for every key: what two ranks compare."""
    return {
        f"{name}.{f.name}": _toml_value(_key_value(spec, name, f.name))
        for name in SECTIONS
        for f in dataclasses.fields(getattr(spec, name))
    }


def to_toml(spec: JobSpec) -> str:
    """The resolved spec as TOML (every key, defaults included), loadable by load_job."""
    lines = [f"# resolved job spec (from {spec.source})"]
    for name in SECTIONS:
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(getattr(spec, name)):
            lines.append(f"{f.name} = {_toml_value(_key_value(spec, name, f.name))}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, LayerSpec):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in _layer_items(value)) + " }"
    if isinstance(value, tuple):
        if not value:
            return "[]"
        return "[\n  " + ",\n  ".join(_toml_value(v) for v in value) + ",\n]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _layer_items(layer: LayerSpec):
    """Only the keys the layer's type takes (so the output parses back)."""
    return spec_entry(layer).items()
