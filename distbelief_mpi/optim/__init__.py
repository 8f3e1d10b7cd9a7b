"""Sandblaster L-BFGS building blocks without MPI: shard vector store, coordinator driver, portion scheduler."""
