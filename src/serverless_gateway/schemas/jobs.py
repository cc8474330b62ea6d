"""Request and response models of /api/v1/jobs/."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ..models import JobStatus

_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class SubStatus(enum.StrEnum):
    """What a RUNNING job is doing, as the official client names it."""

    MAPPING = "MAPPING"
    OPTIMIZING_HARDWARE = "OPTIMIZING_HARDWARE"
    WAITING_QPU = "WAITING_QPU"
    EXECUTING_QPU = "EXECUTING_QPU"
    POST_PROCESSING = "POST_PROCESSING"


class JobProgramOut(BaseModel):
    id: uuid.UUID
    title: str
    provider: str | None = Field(description="The program's provider, or null for a user's own program.")


class JobSummaryOut(BaseModel):
    """A job as lists show it (no result, no message)."""

    id: uuid.UUID
    status: JobStatus
    sub_status: str | None
    program: JobProgramOut
    created: datetime
    updated: datetime
    started: datetime | None
    finished: datetime | None


class JobPage(BaseModel):
    count: int = Field(description="Jobs matching the filters, over all pages.")
    next: str | None = Field(description="Absolute URL of the next page, or null on the last one.")
    previous: str | None = Field(description="Absolute URL of the previous page, or null on the first one.")
    results: list[JobSummaryOut]


class JobOut(JobSummaryOut):
    """One job; `result` is the JSON value the job saved (null when none, or when `with_result=false`)."""

    result: Any = Field(default=None, description="The JSON value the job saved, or null.")
    message: str | None = Field(default=None, description="Why the job ended the way it did, when known.")


class JobResultOut(BaseModel):
    result: str = Field(description="The job's result as a JSON string.")


class JobLogsOut(BaseModel):
    logs: str
    next_offset: int | None = Field(
        default=None, description="With `offset` or `tail`: the byte offset to ask for next (absent otherwise)."
    )


class SubStatusIn(BaseModel):
    sub_status: SubStatus


class JobEventIn(BaseModel):
    """What `send_error` posts from inside a job."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"type": "ERROR", "code": "E42", "message": "the backend refused the circuit"}]
        },
    )

    type: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z_]+$")] = "ERROR"
    code: Any = None
    message: Any = None
    exception: Any = None
    args: Any = None


class JobEventOut(BaseModel):
    event_type: str
    origin: str
    context: str
    created: datetime
    data: dict[str, Any]


class RuntimeJobIn(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"runtime_job": "d1fvy3k0kv2s73fcsq60", "runtime_session": None}]},
    )

    runtime_job: Annotated[str, Field(strict=True, min_length=1, max_length=255, pattern=_PRINTABLE)]
    runtime_session: Annotated[str, Field(strict=True, max_length=255, pattern=_PRINTABLE)] | None = None


class RuntimeJobOut(BaseModel):
    runtime_job: str
    runtime_session: str | None


class RuntimeJobsOut(BaseModel):
    runtime_jobs: list[RuntimeJobOut]
