"""nodetap's pipeline: tail a Hyperliquid node's files into DuckDB, Parquet and a live feed."""

import os

# nodetap makes no BLAS call, but numpy's OpenBLAS starts a thread per core at import, which
# spin for ~0.1 s of CPU (measured: 0.16 against 0.06 s for `import numpy`, then idle)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
