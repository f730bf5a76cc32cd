# SendFlowr's image for the scale deployment (docker-compose.yml): one image, three roles
# (sendflowr run | consumer | worker). Dependencies are pinned by constraints.txt.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Extra pip packages, e.g. --build-arg EXTRA_PACKAGES=s3fs for an s3:// raw archive.
ARG EXTRA_PACKAGES=""

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY schemas ./schemas
RUN pip install -c constraints.txt . ${EXTRA_PACKAGES} \
    && useradd --system --uid 10001 --home-dir /srv/sendflowr --create-home sendflowr \
    && mkdir -p /srv/sendflowr/var /srv/sendflowr/archive \
    && chown -R sendflowr /srv/sendflowr

USER sendflowr
WORKDIR /srv/sendflowr
ENV SENDFLOWR_DATA_DIR=/srv/sendflowr/var \
    SENDFLOWR_HOST=0.0.0.0
EXPOSE 8001
ENTRYPOINT ["sendflowr"]
CMD ["run", "--no-demo"]
