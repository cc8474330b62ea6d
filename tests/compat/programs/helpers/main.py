"""A provider's function that uses the official client's in-job helpers (installed through `dependencies`)."""

# ruff: noqa: T201

import time

from qiskit_serverless import (
    Job,
    get_arguments,
    get_logger,
    get_provider_logger,
    save_result,
    send_error,
    update_status,
)

arguments = get_arguments()
name = arguments.get("name", "nobody")
get_logger().info("public line for %s", name)
get_provider_logger().info("private line for %s", name)
print(f"print line for {name}", flush=True)

if arguments.get("mode") == "fail":
    sent = send_error(
        code="E42",
        message=f"bad input for {name}",
        exception="ValueError",
        args={"field": "mode"},
    )
    print(f"send_error answered ok={sent}", flush=True)
    raise SystemExit(3)

sub_status_ok = update_status(Job.MAPPING)
# Long enough for the client to see "RUNNING: MAPPING" while it polls.
time.sleep(float(arguments.get("hold", 8)))

circuit = arguments.get("circuit")
save_result(
    {
        "greeting": f"hello {name}",
        "sub_status_ok": sub_status_ok,
        "num_qubits": circuit.num_qubits if circuit is not None else None,
        "circuit": circuit,
    }
)
