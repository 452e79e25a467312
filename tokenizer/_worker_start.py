"""Imported first by the fork server that the tokenizer's worker processes start from
(tokenizer/parallel.py), before it imports NumPy: one BLAS thread there, so the server
stays a single-threaded process that can fork safely. Its workers never use BLAS; the
calling process keeps its own settings."""
import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"
