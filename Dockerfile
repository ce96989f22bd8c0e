# The jit-bastion appliance as a container image: the bastion and the web
# UI run from this one image (see compose.yaml), all state in one volume.
#
#   docker build -t jit-bastion:0.1.0 .
#   docker build --build-arg PYTHON_IMAGE=my-registry/python:3.11 ...
#
# Written for the classic builder as well as BuildKit (no RUN --mount).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README* ./
COPY appliance ./appliance
COPY webui ./webui
# PEM text of the CA of a TLS-intercepting proxy between the builder and
# PyPI. Only pip in this stage trusts it; it never reaches the image.
ARG EXTRA_CA_CERTS=""
# The appliance's wheel and every wheel it depends on, for an offline
# install in the runtime stage.
RUN python3 -m venv /tmp/pip \
    && if [ -n "$EXTRA_CA_CERTS" ]; then \
        /tmp/pip/bin/python -c \
            'import pip._vendor.certifi as c; print(open(c.where()).read())' \
            >/tmp/ca.pem \
        && printf '%s\n' "$EXTRA_CA_CERTS" >>/tmp/ca.pem \
        && export PIP_CERT=/tmp/ca.pem; \
    fi \
    && /tmp/pip/bin/pip wheel --no-cache-dir --disable-pip-version-check \
        --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/jit-bastion/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JIT_BASTION_STATE=/var/lib/jit-bastion
COPY --from=build /wheels /tmp/wheels
RUN python3 -m venv /opt/jit-bastion \
    && /opt/jit-bastion/bin/pip install --no-cache-dir --no-index \
        --disable-pip-version-check --find-links /tmp/wheels jit-bastion \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /var/lib/jit-bastion --shell /usr/sbin/nologin jit-bastion \
    && install -d -o jit-bastion -g jit-bastion -m 0700 /var/lib/jit-bastion
COPY images/systemd/libexec/first-boot /usr/local/libexec/jit-bastion/first-boot
COPY images/docker/entrypoint /usr/local/bin/jit-bastion-entrypoint
COPY images/docker/healthcheck.py /usr/local/bin/jit-bastion-healthcheck

USER jit-bastion
WORKDIR /var/lib/jit-bastion
VOLUME /var/lib/jit-bastion
# The bastion (publish it as 22) and the web UI (HTTPS).
EXPOSE 2222 8443
# Asks whichever service this container runs: an SSH banner on its port,
# or an HTTP answer from the web UI.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/opt/jit-bastion/bin/python", "/usr/local/bin/jit-bastion-healthcheck"]
ENTRYPOINT ["/usr/local/bin/jit-bastion-entrypoint"]
CMD ["serve", "ssh"]
