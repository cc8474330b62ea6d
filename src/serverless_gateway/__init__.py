"""serverless-gateway: run uploaded Python functions as jobs on Ray behind the Qiskit Serverless REST API."""

__version__ = "0.1.0"
