# DEMO ONLY: the image of compose.yaml's "demo" profile, holding the
# Proxmox API double from tests/pvedouble and Debian's sshd as a target.
# Never deploy it: it has test code and an account without a password.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG EXTRA_CA_CERTS=""
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-server \
    && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_* \
    && mkdir -p /run/sshd \
    && useradd --create-home --shell /bin/sh alice \
    && usermod --password '*' alice
WORKDIR /opt/demo
COPY pyproject.toml README* ./
COPY appliance ./appliance
COPY webui ./webui
COPY tests ./tests
RUN python3 -m venv /opt/demo/venv \
    && if [ -n "$EXTRA_CA_CERTS" ]; then \
        /opt/demo/venv/bin/python -c \
            'import pip._vendor.certifi as c; print(open(c.where()).read())' \
            >/tmp/ca.pem \
        && printf '%s\n' "$EXTRA_CA_CERTS" >>/tmp/ca.pem \
        && export PIP_CERT=/tmp/ca.pem; \
    fi \
    && /opt/demo/venv/bin/pip install --no-cache-dir . 'jsonschema>=4.20' \
    && rm -f /tmp/ca.pem
COPY images/docker/demo-target /usr/local/bin/demo-target
ENV PATH=/opt/demo/venv/bin:$PATH
