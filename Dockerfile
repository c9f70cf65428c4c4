FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CALLBRIDGE_SERVER_HOST=0.0.0.0 \
    CALLBRIDGE_SERVER_PORT=8080 \
    CALLBRIDGE_LOGGING_FORMAT=json \
    CALLBRIDGE_OUTBOX_PATH=/data/outbox.db

RUN useradd --create-home --uid 10001 callbridge && mkdir /data && chown callbridge /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY config ./config
# Extras to install, e.g. --build-arg CALLBRIDGE_EXTRAS=s3,sentiment,codecs (s3: call
# artifacts in an object store, the usual place for a container's files).
ARG CALLBRIDGE_EXTRAS=s3
RUN pip install --no-cache-dir ".[${CALLBRIDGE_EXTRAS}]" && rm -rf /root/.cache

VOLUME /data
USER callbridge
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CALLBRIDGE_SERVER_PORT', '8080'), timeout=2)"
ENTRYPOINT ["callbridge"]
CMD ["serve"]
