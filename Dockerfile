# nodetap: tail a Hyperliquid node's output into DuckDB, Parquet and a live API.
#   docker build -t nodetap .
#   docker run -v ~/hl/data:/node:ro -v nodetap-data:/data -p 8000:8000 nodetap
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY etl ./etl
COPY api ./api
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    NODETAP_NODE_DIR=/node \
    NODETAP_DB=/data/nodetap.duckdb \
    NODETAP_LAKE_DIR=/data/lake \
    NODETAP_RULES_FILE=/etc/nodetap/rules.toml \
    NODETAP_HOST=0.0.0.0 \
    NODETAP_PORT=8000 \
    NUMBA_CACHE_DIR=/var/cache/nodetap/numba
COPY --from=build /install /usr/local
# the default rules; PUT /v1/rules rewrites this file (mount your own to keep edits)
COPY data/rules.toml /etc/nodetap/rules.toml
# the pre-filter's byte scan (numba) compiled once, into a cache its user can write (numba
# only uses a cache directory it can write; a CPU unlike the builder's compiles it again there)
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin nodetap \
    && mkdir -p /data /node "$NUMBA_CACHE_DIR" \
    && python -c "import etl.bytescan as scan; scan.warm()" \
    && chown -R 10001:10001 /data /etc/nodetap /var/cache/nodetap
USER 10001:10001
WORKDIR /data
VOLUME ["/node", "/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["nodetap", "serve"]
