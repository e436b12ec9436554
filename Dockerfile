# One image for both roles: `whitebox gateway` or `whitebox worker`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY common ./common
COPY service ./service
COPY workers ./workers
COPY cli ./cli
RUN pip install --no-cache-dir . && useradd --uid 10001 whitebox
USER 10001
ENV WHITEBOX_HOST=0.0.0.0 WHITEBOX_PORT=8000
EXPOSE 8000 9100
CMD ["whitebox", "gateway"]
