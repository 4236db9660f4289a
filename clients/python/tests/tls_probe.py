"""The client over TLS and mutual TLS; run by tests/python_client.rs.

    tls_probe.py PORT CA_PEM CLIENT_CERT_PEM CLIENT_KEY_PEM

The server at 127.0.0.1:PORT serves TLS with a certificate of the CA and asks for a
client certificate of the same CA. Prints `ok ...` per check.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from jobledger import TLS, Client, Retries, errors

port, ca, cert, key = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
mutual = TLS(root_certificates=ca, certificate_chain=cert, private_key=key)
with Client(f"https://127.0.0.1:{port}", tls=mutual, timeout=5) as client:
    deadline = time.monotonic() + 30
    while True:  # until the server is up and its database probed
        try:
            if client.health() == "SERVING":
                break
        except errors.Unavailable:
            pass
        assert time.monotonic() < deadline, "the TLS server never became SERVING"
        time.sleep(0.1)
    job = client.create("tls", {"over": "mutual TLS"}, idempotency_key="tls-1").job
    assert client.get(job.id).params == {"over": "mutual TLS"}
    print(f"ok mutual TLS: created {job.id}", flush=True)

# PEM bytes work as well as paths; no client certificate is refused in the handshake.
no_cert = TLS(root_certificates=ca.read_bytes())
once = Retries(budget=0)
for name, client in (
    ("without a client certificate", Client(f"127.0.0.1:{port}", tls=no_cert, retries=once)),
    ("in plaintext", Client(f"http://127.0.0.1:{port}", retries=once)),
):
    with client:
        try:
            client.health()
        except errors.Unavailable as err:
            print(f"ok refused {name}: {type(err).__name__}", flush=True)
        else:
            raise AssertionError(f"served {name}")
