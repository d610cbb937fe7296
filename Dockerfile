# syntax=docker/dockerfile:1
# The ranking server.
#   Build:        docker build -t ranking .
#   Smaller demo: docker build --build-arg RANKING_DEMO_TREES=50 --build-arg RANKING_DEMO_LEAVES=15 -t ranking .
#   Run the demo: docker run -p 50051:50051 ranking
#   Run a bundle: docker run -p 50051:50051 -v $PWD/bundle:/bundle:ro ranking serve --bundle /bundle
# No Docker engine runs where this project is developed and tested, so the image itself has not
# been built there: scripts/check lints this file with hadolint, and tests/deploy/test_image_steps.py
# repeats its steps outside Docker (wheel, install into an empty virtualenv, demo cache, serve,
# health check), reading them from this file.

FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos protos
COPY ranking ranking
# The package and every dependency as wheels, so the runtime stage installs without an index.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# LightGBM needs the OpenMP runtime.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
RUN groupadd --gid 10001 ranking && useradd --create-home --uid 10001 --gid 10001 ranking
USER 10001:10001
# The demo model's size (build args, kept in the environment so `ranking serve` finds the cache).
ARG RANKING_DEMO_TREES=500
ARG RANKING_DEMO_LEAVES=63
ENV RANKING_HOST=0.0.0.0 \
    RANKING_PORT=50051 \
    RANKING_DEMO_TREES=${RANKING_DEMO_TREES} \
    RANKING_DEMO_LEAVES=${RANKING_DEMO_LEAVES} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Build and cache the demo model at image build time so the first start is fast.
RUN python -c "from ranking.settings import Settings; from ranking.server.app import demo_bundle_path; demo_bundle_path(Settings(), progress=False)"
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["ranking", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["ranking"]
CMD ["serve"]
