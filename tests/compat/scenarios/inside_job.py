"""Inside a job: get_arguments, save_result, update_status, send_error, get_logger, get_provider_logger.

Runs acme/helpers (which installs qiskit-serverless through its `dependencies`) as a user of a granted
group; GATEWAY_PROVIDER_TOKEN belongs to the provider's admin, who reads the private logs.
"""

# ruff: noqa: T201
from __future__ import annotations

from common import check, check_equal, connect, expect_error, step, wait_for_status, wait_terminal
from qiskit import QuantumCircuit

user = connect()
admin = connect("GATEWAY_PROVIDER_TOKEN")
helpers = user.function("acme/helpers")

circuit = QuantumCircuit(2)
circuit.h(0)
circuit.cx(0, 1)
circuit.measure_all()

step("start a passing and a failing job at once (the first run installs the dependencies)")
good = helpers.run(name="victor", circuit=circuit, hold=8)
failing = helpers.run(name="victor", mode="fail")

step("update_status(MAPPING) inside the job shows as 'RUNNING: MAPPING'")
seen = wait_for_status(good, {"RUNNING: MAPPING"}, timeout=420)
print("    statuses seen:", seen)
# Ray builds the pip environment on this fresh head while the job waits: it is PENDING long enough to be seen.
check("INITIALIZING" in seen, f"the job should show INITIALIZING while its dependencies install: {seen}")
check_equal(good.raw_data.get("sub_status"), "MAPPING", "sub_status in the job's data")
check_equal(wait_terminal(good, timeout=120)[-1], "DONE", "final status")

step("save_result: result() is what the job saved (a circuit argument survives the round trip)")
result = good.result()
print("    result:", {k: v for k, v in result.items() if k != "circuit"})
check_equal(result["greeting"], "hello victor", "greeting")
check_equal(result["sub_status_ok"], True, "update_status answered ok")
check_equal(result["num_qubits"], 2, "the circuit argument was decoded by get_arguments()")
check_equal(result["circuit"], circuit, "the circuit in the result")

step("get_logger lines reach the user, get_provider_logger lines only the provider")
logs = good.logs()
print("    user's logs:\n" + logs)
check("public line for victor" in logs, "get_logger() line missing from the user's logs")
check("print line for victor" in logs, "print() line missing from the user's logs")
check("private line for victor" not in logs, "get_provider_logger() line leaked to the user")
expect_error(good.provider_logs)
provider_logs = admin.provider_logs(good.job_id)
check("private line for victor" in provider_logs, "get_provider_logger() line missing from provider_logs()")
check("public line for victor" in provider_logs, "get_logger() line missing from provider_logs()")

step("send_error: error_message() and result() of a failed job carry the message")
check_equal(wait_terminal(failing, timeout=300)[-1], "ERROR", "status of the failing job")
check("send_error answered ok=True" in failing.logs(), "send_error() should answer ok")
message = failing.error_message()
print("    error_message():", message)
check("bad input for victor" in message and "E42" in message and "ValueError" in message, "error_message()")
events = failing.events(type="ERROR")
check_equal(len(events), 1, "one ERROR event")
check_equal(events[0].event_type, "ERROR", "event_type")
check_equal(events[0].data.get("code"), "E42", "event code")
check_equal(events[0].data.get("args"), {"field": "mode"}, "event args")
expect_error(failing.result, "bad input for victor")
check_equal(good.events(type="ERROR"), [], "no ERROR events for the good job")
print("inside job: OK")
