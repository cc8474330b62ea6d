"""Functions: upload, list, get by title, upsert, validate_arguments, dependencies_versions, readable errors."""

# ruff: noqa: T201
from __future__ import annotations

import os

from common import check, check_equal, connect, expect_error, stage, step
from qiskit_serverless import QiskitFunction, QiskitServerlessException, ServerlessClient

step("a wrong token is refused with a readable message")
expect_error(
    lambda: ServerlessClient(host=os.environ["GATEWAY_URL"], token="not-a-token", channel="local"),
    "Credentials couldn't be verified",
    "401",
)

client = connect()
print(client)

step("upload a function with dependencies, env_vars, description, version and an arguments schema")
schema = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 1}},
    "required": ["n"],
}
uploaded = client.upload(
    QiskitFunction(
        title="fn-catalog",
        entrypoint="main.py",
        working_dir=stage("plain"),
        dependencies=[],
        env_vars={"GREETING": "hi"},
        description="first description",
        version="1.0.0",
        arguments_schema=schema,
    )
)
print("uploaded:", repr(uploaded), uploaded.raw_data)
check_equal(uploaded.title, "fn-catalog", "uploaded title")
check(uploaded.provider is None, f"a user's function has no provider, got {uploaded.provider!r}")
check_equal(uploaded.entrypoint, "main.py", "uploaded entrypoint")

step("functions() lists it")
functions = client.functions()
by_title = {f.title: f for f in functions}
check("fn-catalog" in by_title, f"functions() should list fn-catalog: {list(by_title)}")
listed = by_title["fn-catalog"]
check_equal(listed.description, "first description", "listed description")
check_equal(listed.version, "1.0.0", "listed version")
check_equal(listed.type, "GENERIC", "listed type")
check_equal(listed.arguments_schema, schema, "listed arguments_schema")

step("function(title) finds it; upload again updates it (an upsert)")
client.upload(
    QiskitFunction(
        title="fn-catalog",
        entrypoint="main.py",
        working_dir=stage("plain"),
        description="second description",
        version="1.0.1",
        arguments_schema=schema,
    )
)
fetched = client.function("fn-catalog")
check(fetched is not None, "function('fn-catalog') returned None")
check_equal(fetched.title, "fn-catalog", "fetched title")
check_equal(fetched.description, "second description", "description after re-upload")
check_equal(fetched.version, "1.0.1", "version after re-upload")
check_equal(fetched.entrypoint, "main.py", "fetched entrypoint")
check_equal([f.title for f in client.functions()].count("fn-catalog"), 1, "fn-catalog listed once after upsert")

step("validate_arguments: valid arguments pass, invalid ones are refused readably")
answer = client.validate_arguments("fn-catalog", {"n": 3})
print("    valid:", answer)
check(isinstance(answer, dict), f"validate_arguments should answer an object, got {answer!r}")
check(answer.get("valid", True) is True, f"valid arguments reported invalid: {answer!r}")
answer = fetched.validate_arguments({"n": 5})
check(answer.get("valid", True) is True, f"valid arguments reported invalid: {answer!r}")
expect_error(lambda: client.validate_arguments("fn-catalog", {"n": 0}), "400")
expect_error(lambda: client.validate_arguments("fn-catalog", {}), "400")

step("dependencies_versions() lists what functions may depend on (the gateway runs with an allow-list)")
versions = client.dependencies_versions()
print("    ", versions)
check_equal(versions, ["qiskit-serverless"], "dependencies_versions()")

step("a dependency outside the allow-list is refused at upload, readably")
expect_error(
    lambda: client.upload(
        QiskitFunction(title="fn-numpy", entrypoint="main.py", working_dir=stage("plain"), dependencies=["numpy"])
    ),
    "400",
    "numpy",
    "allowed",
)

step("unknown functions give a readable 404")
expect_error(lambda: client.function("no-such-function"), "404")
expect_error(lambda: client.run("no-such-function", arguments={}), "404")

step("a user who is not a provider's admin cannot upload under it")
expect_error(
    lambda: client.upload(QiskitFunction(title="acme/intruder", entrypoint="main.py", working_dir=stage("plain"))),
)

step("a function with a container image (unsupported here) is refused readably")
expect_error(lambda: client.upload(QiskitFunction(title="fn-image", image="docker.io/library/python:3.11")), "400")

step("another user does not see this user's functions")
other = connect("GATEWAY_OTHER_TOKEN")
check("fn-catalog" not in [f.title for f in other.functions()], "another user sees fn-catalog in functions()")
expect_error(lambda: other.function("fn-catalog"), "404")

step("a client-side check: an entrypoint missing from working_dir never reaches the gateway")
try:
    client.upload(QiskitFunction(title="fn-missing", entrypoint="nope.py", working_dir=stage("plain")))
    raise AssertionError("upload of a missing entrypoint should fail")
except QiskitServerlessException as exc:
    print("    raised as expected:", " ".join(str(exc).split())[:200])

print("functions scenario: OK")
