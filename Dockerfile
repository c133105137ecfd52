# One image for every dctwin role; the compose file picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY domain ./domain
COPY dctwin ./dctwin
COPY collectors ./collectors
COPY ingest ./ingest
COPY twin ./twin
COPY api ./api
COPY simulator ./simulator
COPY experiments ./experiments
COPY bench ./bench
RUN pip install --no-cache-dir '.[collector,server]'
COPY deploy/collector-simulated.toml /etc/dctwin/collector.toml
ENV DCTWIN_DB_PATH=/var/lib/dctwin/dctwin.duckdb
EXPOSE 8000
ENTRYPOINT ["dctwin"]
