"""Command-line tools that build and check schema-1 dataset files.

Run `python -m data_tools --help`. See docs/datasets.md for the file format.
"""

__version__ = "0.1.0"
CREATED_BY = f"distbelief-mpi data_tools {__version__}"
