#!/usr/bin/env python3
"""Checks jobledger's health (grpc.health.v1.Health/Check, the protocol Kubernetes'
gRPC probes speak) with the library's `Client.health`.

jobledger serves three names: "" and "jobledger.v1.JobLedger" (SERVING while its
database answers) and "liveness" (SERVING while the process runs). Any other name is
NOT_FOUND. Prints one line per service:

    '' SERVING
    'liveness' SERVING
    'no.such.Service' NOT_FOUND: service not registered

Exit status as grpc-health-probe's (and `jobledger health`'s): 0 when every service
is SERVING, 2 when the server cannot be reached, 3 when a check failed (e.g.
NOT_FOUND), 4 when a service is not serving.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobledger import Client, JobledgerError, Retries
from jobledger.errors import DeadlineExceeded, Unavailable


def main() -> int:
    """Checks each service; the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--addr",
        default=os.environ.get("JOBLEDGER_ADDR", "127.0.0.1:50051"),
        help="host:port or http://host:port (env JOBLEDGER_ADDR; default 127.0.0.1:50051)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per check")
    parser.add_argument(
        "services", nargs="*", default=["", "liveness"], help='default: "" and liveness'
    )
    args = parser.parse_args()

    worst = 0
    # A probe answers now: no repeats after UNAVAILABLE.
    with Client(args.addr, timeout=args.timeout, retries=Retries(budget=0)) as client:
        for service in args.services:
            try:
                status = client.health(service)
            except JobledgerError as err:
                print(f"{service!r} {err.code.name}: {err.message}", flush=True)
                unreachable = isinstance(err, Unavailable | DeadlineExceeded)
                worst = max(worst, 2 if unreachable else 3)
                continue
            print(f"{service!r} {status}", flush=True)
            if status != "SERVING":
                worst = max(worst, 4)
    return worst


if __name__ == "__main__":
    sys.exit(main())
