# OpenDT daemon image. Build: docker build -t opendt .   Run: see compose.yaml.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 opendt
WORKDIR /app

# Dependencies first (cached layer), then the package.
COPY pyproject.toml README.md ./
COPY opendt ./opendt
COPY config ./config
COPY data/demo ./data/demo
RUN pip install . && mkdir -p /app/data/runs && chown -R opendt:opendt /app/data

USER opendt
EXPOSE 8080
ENV OPENDT_API__HOST=0.0.0.0 \
    OPENDT_DATA_DIR=/app/data

HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status == 200 else 1)"

ENTRYPOINT ["opendt"]
CMD ["run"]
