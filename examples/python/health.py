#!/usr/bin/env python3
"""Checks jobledger's health with grpcio-health-checking (grpc.health.v1.Health/Check),
the protocol Kubernetes' gRPC probes speak.

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

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDR = "127.0.0.1:50051"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--addr",
        default=os.environ.get("JOBLEDGER_ADDR", DEFAULT_ADDR),
        help=f"host:port or http://host:port (env JOBLEDGER_ADDR; default {DEFAULT_ADDR})",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per check (default 5)")
    parser.add_argument(
        "services",
        nargs="*",
        default=["", "liveness"],
        help='service names to check (default: "" and liveness)',
    )
    args = parser.parse_args()
    target = args.addr.removeprefix("http://").rstrip("/")

    worst = 0
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in args.services:
            try:
                response = health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=args.timeout
                )
            except grpc.RpcError as err:
                print(f"{service!r} {err.code().name}: {err.details()}", flush=True)
                unreachable = err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                worst = max(worst, 2 if unreachable else 3)
                continue
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            print(f"{service!r} {status}", flush=True)
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                worst = max(worst, 4)
    return worst


if __name__ == "__main__":
    sys.exit(main())
