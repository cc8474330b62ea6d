"""Provider, step 1 (a provider admin): upload two functions under the provider and a provider file."""

# ruff: noqa: T201
from __future__ import annotations

from pathlib import Path

from common import check, check_equal, connect, stage, step
from qiskit_serverless import QiskitFunction

admin = connect()

step("upload acme/helpers (uses qiskit_serverless inside; installed through `dependencies`)")
helpers = admin.upload(
    QiskitFunction(
        title="acme/helpers",
        entrypoint="main.py",
        working_dir=stage("helpers"),
        dependencies=["qiskit-serverless==0.37.0"],
        description="in-job helpers",
    )
)
check_equal((helpers.provider, helpers.title), ("acme", "helpers"), "uploaded provider function")

step("upload acme/plain with title and provider given separately")
plain = admin.upload(
    QiskitFunction(title="plain", provider="acme", entrypoint="main.py", working_dir=stage("provider_plain"))
)
check_equal((plain.provider, plain.title), ("acme", "plain"), "uploaded provider function")

step("the admin sees both with functions() and function(title, provider)")
listed = {(f.provider, f.title) for f in admin.functions()}
check({("acme", "helpers"), ("acme", "plain")} <= listed, f"admin's functions(): {listed}")
check_equal(admin.function("acme/plain").title, "plain", "function('acme/plain')")
check_equal(admin.function("helpers", provider="acme").provider, "acme", "function('helpers', provider='acme')")

step("the admin uploads a provider file for acme/plain")
secret = Path("provider-secret.txt")
secret.write_text("only for acme admins\n")
answer = admin.provider_file_upload(str(secret), plain)
print("    provider upload answered:", answer)
check("provider-secret.txt" in admin.provider_files(plain), "provider_files() lists the provider file")
print("provider setup: OK")
