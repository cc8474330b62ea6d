"""Settings of the gateway, read from `GATEWAY_*` environment variables; bad values stop start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of the gateway; each field maps to `GATEWAY_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql+asyncpg://...). Unset: an embedded PostgreSQL under data_dir.",
    )
    data_dir: Path = Field(default=Path("./.gateway"), description="Where local state lives.")
    storage_url: str | None = Field(
        default=None, description="file:///path or s3://bucket/prefix. Unset: <data_dir>/storage."
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, moto...).")
    s3_region: str | None = Field(default=None, description="S3 region.")
    s3_part_size: int = Field(default=8 * MIB, ge=5 * MIB, description="Part size of multipart uploads to S3.")
    s3_parts_in_flight: int = Field(
        default=1, ge=1, le=16, description="Parts of one upload sent at once (more: faster, ~part size more memory)."
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray dashboard URL (http://host:8265). Unset: `serve` starts a local Ray head.",
    )
    public_url: str | None = Field(
        default=None, description="Base URL jobs use to call the gateway back. Unset: http://<host>:<port>."
    )
    max_upload_bytes: int = Field(default=2048 * MIB, gt=0, description="Largest file upload.")
    max_artifact_bytes: int = Field(default=200 * MIB, gt=0, description="Largest program artifact.")
    artifact_max_members: int = Field(default=10_000, gt=0, description="Most members a program artifact may hold.")
    artifact_max_unpacked_bytes: int = Field(
        default=1024 * MIB, gt=0, description="Largest total size of an artifact's files once unpacked."
    )
    max_active_jobs_per_user: int = Field(
        default=100, gt=0, description="Jobs a user may have QUEUED, PENDING or RUNNING at once."
    )
    max_page_size: int = Field(default=100, gt=0, le=10_000, description="Largest `limit` of a list.")
    max_running_jobs: int = Field(default=64, gt=0, description="Jobs handed to Ray at once, all users.")
    max_running_jobs_per_user: int = Field(default=8, gt=0, description="Jobs handed to Ray per user.")
    max_workers: int = Field(default=16, gt=0, description="Largest `config.workers` a run may ask for.")
    log_max_bytes: int = Field(default=50 * MIB, gt=0, description="Stored logs are capped to their tail.")
    max_result_bytes: int = Field(default=64 * MIB, gt=0, description="Largest result a job may save.")
    max_events_per_job: int = Field(default=1000, gt=0, description="Events a job may record (over it: 429).")
    max_runtime_jobs_per_job: int = Field(
        default=1000, gt=0, description="Qiskit Runtime jobs a job may record (over it: 429)."
    )
    max_files_per_function: int = Field(
        default=1000, gt=0, description="Files a user (or a provider) may keep beside one function."
    )
    max_file_bytes_per_user: int = Field(
        default=10 * 1024 * MIB, gt=0, description="Bytes of files a user (or a provider) may keep, all functions."
    )
    max_job_seconds: int = Field(
        default=86_400, gt=0, description="Longest a job may run; a run's config.max_run_seconds may ask for less."
    )
    dependency_allowlist: list[str] | None = Field(
        default=None, description="If set, the only package names a program may depend on (JSON list)."
    )
    sync_interval_seconds: float = Field(default=1.0, gt=0, description="How often running jobs are synced.")
    sweep_interval_seconds: float = Field(default=5.0, gt=0, description="Safety-net sweep for QUEUED jobs.")
    job_entrypoint_num_cpus: float = Field(
        default=0.0, ge=0, description="CPUs a job's entrypoint reserves on Ray (Ray's default 0; caps bound jobs)."
    )
    gc_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often unreferenced artifacts, results, logs and workdirs are removed."
    )
    gc_grace_seconds: float = Field(
        default=3600.0, ge=60, description="Only what is older than this is collected (uploads in flight keep theirs)."
    )
    submission_build_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Longest time to prepare a job's files for Ray; past it the job fails."
    )
    run_engine: bool = Field(default=True, description="Run the dispatcher inside the API process.")
    db_pool_size: int = Field(default=20, gt=0, le=500, description="Database connections kept open per process.")
    db_connect_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Longest wait to connect to the database or for a free pooled connection."
    )
    db_statement_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Longest a database statement may run (PostgreSQL statement_timeout)."
    )
    db_request_timeout_seconds: float = Field(
        default=4.0,
        gt=0,
        description="Longest an API request waits on the database (connection, each statement): a hung database "
        "gets a 503 after this, not a hung request. The engine's own pool keeps the statement timeout.",
    )
    db_idle_in_transaction_timeout_seconds: float = Field(
        default=60.0, gt=0, description="PostgreSQL ends a session idle this long inside a transaction."
    )
    max_body_bytes: int = Field(default=1 * MIB, gt=0, description="Largest request body of the small JSON calls.")
    max_arguments_bytes: int = Field(
        default=4 * MIB, gt=0, description="Largest run arguments (JSON text) of `programs/run/`."
    )
    token_cache_seconds: float = Field(default=5.0, ge=0, description="How long a checked token is trusted.")
    isolation: Literal["auto", "required", "shared"] = Field(
        default="auto",
        description=(
            "Without GATEWAY_RAY_ADDRESS: `auto` gives each tenant its own sandboxed local Ray head when bubblewrap "
            "works (else one shared head, with a warning); `required` refuses to start without the sandbox; "
            "`shared` runs every tenant on one local head."
        ),
    )
    max_clusters: int | None = Field(
        default=None,
        gt=0,
        description="Tenant Ray heads running at once. Unset: as many as half the free memory holds.",
    )
    cluster_idle_seconds: float = Field(default=600.0, gt=0, description="An idle tenant Ray head stops after this.")
    cluster_num_cpus: int | None = Field(
        default=None, gt=0, description="CPUs each tenant Ray head offers its jobs. Unset: the machine's."
    )
    cluster_spares: int = Field(
        default=1,
        ge=0,
        le=4,
        description="Sandboxed Ray heads kept started with no tenant, handed to the next new tenant (0: none).",
    )
    cluster_start_timeout_seconds: float = Field(
        default=120.0, gt=0, description="How long a tenant Ray head may take to start."
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR (the gateway's and uvicorn's).")
    log_format: Literal["text", "json"] = Field(default="text", description="`text` lines, or one JSON object a line.")
    metrics: bool = Field(default=True, description="Serve Prometheus metrics at `/metrics` (false: 404).")
    metrics_token: SecretStr | None = Field(
        default=None, description="If set, `/metrics` needs `Authorization: Bearer <this token>`."
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, le=3600, description="On SIGTERM: how long in-flight requests may take to finish."
    )
    shutdown_delay_seconds: float = Field(
        default=2.0, ge=0, le=300, description="On SIGTERM: how long readiness answers 503 before the listener closes."
    )

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value.upper()

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or value.get_secret_value() == "" else value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith("postgres://"):
            value = "postgresql://" + value.removeprefix("postgres://")
        if value.startswith("postgresql://"):
            value = "postgresql+asyncpg://" + value.removeprefix("postgresql://")
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not (value.startswith("file://") or value.startswith("s3://")):
            raise ValueError("must start with file:// or s3://")
        return value

    @field_validator("ray_address", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not (value.startswith("http://") or value.startswith("https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'storage').resolve()}"


class SettingsError(Exception):
    """A setting could not be read; the message is one line naming the variable."""


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, turning validation errors into one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "GATEWAY_" + str(first["loc"][0]).upper() if first["loc"] else "GATEWAY_*"
        raise SettingsError(f"invalid setting {name}: {first['msg']}") from None
