"""nodetap's HTTP and WebSocket API."""

import etl  # noqa: F401 - first: it sets OPENBLAS_NUM_THREADS before numpy loads
