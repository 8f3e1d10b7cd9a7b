"""The only package that calls MPI for data movement."""
