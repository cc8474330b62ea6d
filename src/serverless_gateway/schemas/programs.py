"""Request and response models of /api/v1/programs/."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ..models import JobStatus, ProgramType

StrictPositiveInt = Annotated[int, Field(strict=True, ge=1)]


class ProgramFilter(enum.StrEnum):
    SERVERLESS = "serverless"
    CATALOG = "catalog"


class ProgramOut(BaseModel):
    """A program (function) as the API shows it; `env_vars` only to its author or its provider's admins."""

    id: uuid.UUID
    title: str
    entrypoint: str
    artifact: str | None = Field(description="sha256 of the uploaded artifact.")
    dependencies: list[str]
    env_vars: dict[str, str] = Field(
        description="Only shown to the program's author or its provider's admins; otherwise empty."
    )
    provider: str | None
    type: ProgramType
    version: str
    description: str
    disabled: bool
    disabled_reason: str | None
    arguments_schema: dict[str, Any] | bool | None = Field(
        description="The JSON Schema arguments must match, or null when the program declares none."
    )
    created: datetime
    updated: datetime


class RunConfig(BaseModel):
    """Ray resources asked for a run; unknown keys are ignored, types are strict."""

    model_config = ConfigDict(extra="ignore")

    workers: StrictPositiveInt | None = None
    min_workers: StrictPositiveInt | None = None
    max_workers: StrictPositiveInt | None = None
    auto_scaling: Annotated[bool, Field(strict=True)] | None = False
    max_run_seconds: StrictPositiveInt | None = Field(
        default=None, description="Stop the job after this many seconds of running (at most the gateway's limit)."
    )


class RunRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"title": "hello-world", "arguments": {"n": 3}, "config": {"workers": 1}}],
        },
    )

    title: Annotated[str, Field(strict=True, min_length=1, max_length=512)]
    provider: Annotated[str, Field(strict=True, max_length=150)] | None = None
    arguments: dict[str, Any] | Annotated[str, Field(strict=True)] | None = Field(
        default=None, description="A JSON object, or a string holding one."
    )
    config: RunConfig | None = None


class RunOut(BaseModel):
    id: uuid.UUID
    status: JobStatus


class ValidateArgumentsRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"examples": [{"title": "hello-world", "arguments": {"n": 3}}]}
    )

    title: Annotated[str, Field(strict=True, min_length=1, max_length=512)]
    provider: Annotated[str, Field(strict=True, max_length=150)] | None = None
    arguments: dict[str, Any] | Annotated[str, Field(strict=True)] | None = Field(
        default=None, description="A JSON object, or a string holding one."
    )


class ValidateArgumentsOut(ProgramOut):
    """The program whose schema the arguments matched."""

    valid: bool = True
