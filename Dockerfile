# syntax=docker/dockerfile:1
# The ranking server. Build: docker build -t ranking .
# Run the demo:  docker run -p 50051:50051 ranking
# Run a bundle:  docker run -p 50051:50051 -v $PWD/bundle:/bundle ranking serve --bundle /bundle

FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos protos
COPY ranking ranking
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# LightGBM needs the OpenMP runtime.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN useradd --create-home --uid 10001 ranking
USER ranking
ENV RANKING_HOST=0.0.0.0 \
    RANKING_PORT=50051 \
    PYTHONUNBUFFERED=1
# Build and cache the demo model at image build time so the first start is fast.
RUN python -c "from ranking.settings import Settings; from ranking.server.app import demo_bundle_path; demo_bundle_path(Settings(), progress=False)"
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["ranking", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["ranking"]
CMD ["serve"]
