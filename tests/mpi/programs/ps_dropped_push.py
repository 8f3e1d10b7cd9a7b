"""A replica that leaves half-way through a push landing in chunks (replica_loss = continue):
the shard has opened the push and applied its first chunks; dropping it (what the serve loop
does for a replica found gone, Shard._drop_open then LandingSlots.reclaim) must leave the
parameters, the Adagrad accumulators and the version as they were, and free the slot with
LANDED back at 0, so that the next push is applied exactly as if the dropped one never came.

Rank 0 is the shard, rank 1 plays the replica: it claims slot 0, writes the header and puts
the first chunk by hand (as ReplicaEndpoint does), then "leaves" (stops), then pushes anew."""

import numpy as np

from distbelief_mpi.comm.control import barrier_sleeping
from distbelief_mpi.comm.messages import DONE, Messenger, ReplicaDone
from distbelief_mpi.comm.param_server import (
    FREE,
    ParamServerWindows,
    header_word,
    landed_word,
    slot_state,
    state_word,
)
from distbelief_mpi.comm.replica_endpoint import ReplicaEndpoint
from distbelief_mpi.config import Optimizer
from distbelief_mpi.kernels import reference
from distbelief_mpi.roles.downpour.shard import Shard

N_PARAMS, CHUNK, TAG = 1000, 300, 77
OPT = Optimizer(server_rule="adagrad", server_learning_rate=0.05, adagrad_initial_accumulator=0.1, adagrad_epsilon=1e-8)


def main(world_comm, args):
    windows = ParamServerWindows(world_comm, [0], [(0, N_PARAMS)], 1, 0 if world_comm.Get_rank() == 0 else -1)
    initial = np.linspace(-1, 1, N_PARAMS, dtype=np.float32)
    rng = np.random.default_rng(3)
    dropped, grad = rng.normal(size=(2, N_PARAMS)).astype(np.float32)
    record = shard_side(world_comm, windows, initial) if world_comm.Get_rank() == 0 else {"role": "replica"}
    if world_comm.Get_rank() == 1:
        replica_side(world_comm, windows, dropped, grad)
        params, acc = reference.adagrad_apply(
            initial, grad, np.full(N_PARAMS, 0.1, np.float32), OPT.server_learning_rate, OPT.adagrad_epsilon
        )
        record.update(expected_params=params.tolist(), expected_accumulator=acc.tolist())
    barrier_sleeping(world_comm)
    windows.close()
    return record


def replica_side(world_comm, windows, dropped, grad) -> None:
    endpoint = ReplicaEndpoint(windows, 0, chunk_elements=CHUNK)
    free = slot_state(0, FREE)
    barrier_sleeping(world_comm)
    assert windows.compare_and_swap(0, state_word(0), free, endpoint.claimed_state(free)) == free
    windows.write_words(0, header_word(windows.n_slots, 0), [0, 1, 0, N_PARAMS])  # BASE, STEPS, OFFSET, LENGTH
    windows.put_slot(0, 0, dropped[: 2 * CHUNK])
    windows.write_words(0, landed_word(windows.n_slots, 0), [2 * CHUNK])
    world_comm.send("landed", dest=0, tag=TAG)
    world_comm.recv(source=0, tag=TAG)  # the shard has dropped it
    endpoint.push(0, grad, 0, 1)  # in chunks: 1000 >= 2 x 300
    Messenger(world_comm).send_to_all(DONE, ReplicaDone(0), [0])


def shard_side(world_comm, windows, initial) -> dict:
    shard = Shard(windows, 0, OPT, initial)
    shard.warm_up()
    barrier_sleeping(world_comm)
    world_comm.recv(source=1, tag=TAG)
    shard.apply_pending()
    opened = shard.open is not None and shard.open.applied == 2 * CHUNK
    shard._drop_open(0)  # as Shard._judge_silent does for a replica that left
    reclaimed = shard.slots.reclaim(0)
    after_drop = {
        "opened_and_applied_landed": opened,
        "reclaimed": reclaimed,
        "version": shard.version,
        "params_unchanged": bool(np.array_equal(shard.params, initial)),
        "accumulator_unchanged": bool(np.all(shard.accumulator == np.float32(0.1))),
        "landed_word": int(windows.read_word(0, landed_word(windows.n_slots, 0))),
    }
    world_comm.send("dropped", dest=1, tag=TAG)
    shard.serve(Messenger(world_comm))
    return {
        "role": "shard",
        "after_drop": after_drop,
        "version": shard.version,
        "params": shard.params.tolist(),
        "accumulator": shard.accumulator.tolist(),
        **shard.stats.as_dict(),
    }
