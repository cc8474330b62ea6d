"""Response models of /api/v1/files/."""

from __future__ import annotations

from pydantic import BaseModel, Field


class FileListOut(BaseModel):
    """The file names of one folder; `files` (the spec) and `results` (the official client) hold the same list."""

    files: list[str]
    results: list[str]


class FileUploadOut(BaseModel):
    message: str
    file: str = Field(description="The stored file's name.")
    size: int = Field(description="Its size in bytes.")
