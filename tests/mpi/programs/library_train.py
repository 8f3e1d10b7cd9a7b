"""train() from a script under mpiexec: every rank calls it with the same JobSpec (Downpour, 1
shard + 2 replicas). args: [digits.h5, run_dir]."""

from distbelief_mpi import JobSpec, train
from distbelief_mpi.config import Data, Model, Optimizer, Run, Topology
from distbelief_mpi.model.spec import LayerSpec


def main(world_comm, args: list[str]) -> dict:
    spec = JobSpec(
        topology=Topology(shards=1, replicas=2),
        model=Model(layers=(LayerSpec("dense", units=32, activation="relu"),)),
        optimizer=Optimizer(algorithm="downpour", learning_rate=0.1, batch_size=32, server_learning_rate=0.05),
        data=Data(path=args[0]),
        run=Run(steps=400, progress_seconds=0),
        source="<library test>",
    )
    summary = train(spec, args[1])
    assert summary is not None
    return {"test_accuracy": summary["test_accuracy"], "world_size": summary["world_size"]}
