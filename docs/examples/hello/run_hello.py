import os

from qiskit_serverless import QiskitFunction, ServerlessClient

client = ServerlessClient(
    host=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000"),
    token=os.environ["GATEWAY_TOKEN"],
    channel="local",
)

function = QiskitFunction(
    title="hello",
    entrypoint="hello.py",
    working_dir="./function/",
    dependencies=["qiskit-serverless==0.37.0"],
)
client.upload(function)

hello = client.function("hello")
job = hello.run(name="gateway")
print("job id:", job.job_id)

result = job.result(cadence=2)  # waits for the job to end, checking every 2 s
print("status:", job.status())
print("result:", result)
print("logs:", job.logs())
assert result == {"message": "Hello, gateway!"}
