"""S3 storage through one long-lived aioboto3 client: streamed multipart uploads, streamed downloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConfigParseError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)

from .base import (
    CHUNK_SIZE,
    ObjectInfo,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    StorageUnavailable,
    check_key,
    check_prefix,
)

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MIB
MIN_PART_SIZE = 5 * MIB  # S3's smallest part (except the last one)
MAX_PARTS = 10_000
PARTS_PER_SIZE_STEP = 1_000  # the part size grows by one base size every this many parts, to stay under MAX_PARTS

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_DENIED_CODES = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "AccountProblem",
}
_BUSY_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed"}
_CREDENTIAL_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    ProfileNotFound,
    ConfigParseError,
)
_CHECKSUM_FIELDS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


def part_size_for(part_number: int, base: int) -> int:
    """Size of part `part_number` (1-based): `base` for the first thousand parts, then larger in steps."""
    return base * (1 + (part_number - 1) // PARTS_PER_SIZE_STEP)


class S3Storage:
    """Objects under `prefix` in one bucket; build with `await S3Storage.open(...)`, end with `close()`."""

    def __init__(
        self,
        *,
        client: Any,
        exit_stack: AsyncExitStack,
        bucket: str,
        prefix: str,
        endpoint_url: str | None,
        part_size: int,
        parts_in_flight: int = 1,
    ):
        self._client = client
        self._exit_stack = exit_stack
        self.bucket = bucket
        self.prefix = check_prefix(prefix)
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight

    @classmethod
    async def open(
        cls,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        parts_in_flight: int = 1,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        max_connections: int = 64,
    ) -> S3Storage:
        """Create the one client this storage uses; credentials come from the standard AWS_* variables."""
        if part_size < MIN_PART_SIZE:
            raise StorageError(f"S3 part size must be at least {MIN_PART_SIZE} bytes")
        if parts_in_flight < 1:
            raise StorageError("S3 parts in flight must be at least 1")
        prefix = check_prefix(prefix)
        config = AioConfig(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            # A streamed download holds its connection until the reader is done; past this many, calls queue.
            max_pool_connections=max_connections,
            # A custom endpoint (MinIO, moto, ...) rarely resolves bucket subdomains.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        stack = AsyncExitStack()
        try:
            session = aioboto3.Session(region_name=region)
            client = await stack.enter_async_context(session.client("s3", endpoint_url=endpoint_url, config=config))
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, (BotoCoreError, ValueError)):
                raise StorageUnavailable(f"cannot configure the S3 client: {exc}") from exc
            raise
        return cls(
            client=client,
            exit_stack=stack,
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint_url,
            part_size=part_size,
            parts_in_flight=parts_in_flight,
        )

    @property
    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'the AWS S3 endpoint'}"

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextlib.contextmanager
    def _errors(self, what: str, *, key: str | None = None) -> Iterator[None]:
        """Turn botocore/aiohttp failures into the storage errors the API maps to 404 or 503."""
        try:
            yield
        except StorageError:
            raise
        except ClientError as exc:
            raise self._client_error(exc, what, key) from exc
        except _CREDENTIAL_ERRORS as exc:
            hint = " (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)" if isinstance(exc, NoCredentialsError) else ""
            raise StorageUnavailable(f"S3 credentials unusable for {self._where}: {exc}{hint}") from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StorageUnavailable(f"S3 {what} failed, {self._where} unreachable: {exc}") from exc

    def _client_error(self, exc: ClientError, what: str, key: str | None) -> StorageError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            return StorageUnavailable(f"S3 {self._where} does not exist")
        if code in _MISSING_CODES:
            # Calls about one object name it; a bare 404 elsewhere (head_bucket has no body) is the bucket.
            return ObjectNotFound(key) if key is not None else StorageUnavailable(f"S3 {self._where} does not exist")
        if code in _DENIED_CODES or status == 403:
            return StorageUnavailable(f"S3 access denied to {self._where} ({code}); check the AWS credentials")
        if code == "EntityTooLarge":
            return ObjectTooLarge(f"S3 refused {key!r}: {error.get('Message', code)}")
        if code in _BUSY_CODES or status >= 500:
            return StorageUnavailable(f"S3 {what} failed at {self._where}: {code or status}")
        return StorageError(f"S3 {what} failed at {self._where}: {code or status} {error.get('Message', '')}".strip())

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> int:
        full_key = self._full(key)
        pending: list[bytes] = []
        pending_size = 0
        size = 0
        upload: _MultipartUpload | None = None
        try:
            # Only the S3 calls are translated: an error of the producer (a client that went away) stays its own.
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ObjectTooLarge(f"larger than {max_bytes} bytes")
                pending.append(chunk)
                pending_size += len(chunk)
                next_part = 1 if upload is None else upload.next_part_number
                if pending_size >= part_size_for(next_part, self.part_size):
                    data = b"".join(pending)
                    pending, pending_size = [], 0
                    with self._errors("upload", key=key):
                        if upload is None:
                            upload = await _MultipartUpload.start(
                                self._client, self.bucket, full_key, max_in_flight=self.parts_in_flight
                            )
                        await upload.send(data)
                    del data
            with self._errors("upload", key=key):
                if upload is None:
                    await self._client.put_object(Bucket=self.bucket, Key=full_key, Body=b"".join(pending))
                else:
                    if pending:
                        await upload.send(b"".join(pending))
                        pending = []
                    await upload.complete()
        except BaseException:
            if upload is not None:
                await asyncio.shield(upload.abort())
            raise
        return size

    async def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors("upload", key=key):
            await self._client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)

    async def open_stream(
        self, key: str, *, chunk_size: int = CHUNK_SIZE, start: int = 0
    ) -> AsyncIterator[bytes]:
        full_key = self._full(key)
        extra = {"Range": f"bytes={start}-"} if start > 0 else {}
        try:
            with self._errors("download", key=key):
                response = await self._client.get_object(Bucket=self.bucket, Key=full_key, **extra)
        except StorageError as exc:
            if start > 0 and "InvalidRange" in str(exc):  # `start` is at or past the end
                return
            raise
        body = response["Body"]
        try:
            while True:
                with self._errors("download", key=key):
                    chunk = await body.read(chunk_size)
                if not chunk:
                    break
                yield chunk
        finally:
            body.close()

    async def get_bytes(self, key: str) -> bytes:
        with self._errors("download", key=key):
            response = await self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            body = response["Body"]
            try:
                data: bytes = await body.read()
            finally:
                body.close()
            return data

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            with self._errors("stat", key=key):
                head = await self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key=key, size=int(head["ContentLength"]), modified=head.get("LastModified"))

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    async def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.prefix + check_prefix(prefix)
        found: list[ObjectInfo] = []
        with self._errors("list"):
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    relative = str(item["Key"])[len(base) :]
                    if not relative or relative.endswith("/"):
                        continue  # "folder" markers made by other tools
                    found.append(ObjectInfo(key=relative, size=int(item["Size"]), modified=item.get("LastModified")))
        found.sort(key=lambda info: info.key)
        return found

    async def delete(self, key: str) -> bool:
        if await self.stat(key) is None:
            return False
        with self._errors("delete", key=key):
            await self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
        return True

    async def check(self) -> None:
        try:
            with self._errors("bucket check"):
                await self._client.head_bucket(Bucket=self.bucket)
        except StorageUnavailable:
            raise
        except StorageError as exc:
            raise StorageUnavailable(str(exc)) from exc

    async def abort_stale_uploads(self, *, older_than: timedelta = timedelta(days=1)) -> int:
        """Abort multipart uploads under our prefix that a crashed process left unfinished; returns how many."""
        limit = datetime.now(UTC) - older_than
        aborted = 0
        with self._errors("multipart cleanup"):
            paginator = self._client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Uploads", []):
                    initiated = item.get("Initiated")
                    if isinstance(initiated, datetime) and initiated < limit:
                        await self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=item["Key"], UploadId=item["UploadId"]
                        )
                        aborted += 1
        return aborted

    async def close(self) -> None:
        await self._exit_stack.aclose()


class _MultipartUpload:
    """One multipart upload with at most `max_in_flight` parts being sent while the next one is gathered."""

    def __init__(self, client: Any, bucket: str, key: str, upload_id: str, max_in_flight: int):
        self._client = client
        self._bucket = bucket
        self._key = key
        self._upload_id = upload_id
        self._max_in_flight = max_in_flight
        self._parts: list[dict[str, Any]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self.next_part_number = 1

    @classmethod
    async def start(cls, client: Any, bucket: str, key: str, *, max_in_flight: int) -> _MultipartUpload:
        created = await client.create_multipart_upload(Bucket=bucket, Key=key)
        return cls(client, bucket, key, str(created["UploadId"]), max_in_flight)

    async def send(self, data: bytes) -> None:
        """Wait until fewer than `max_in_flight` parts are being sent, then send this one in the background."""
        if self.next_part_number > MAX_PARTS:
            raise ObjectTooLarge(f"more than {MAX_PARTS} parts")
        await self._wait(self._max_in_flight - 1)
        number = self.next_part_number
        self.next_part_number += 1
        self._in_flight.add(asyncio.create_task(self._upload_part(number, data)))

    async def _upload_part(self, number: int, data: bytes) -> None:
        response = await self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=data
        )
        part: dict[str, Any] = {"PartNumber": number, "ETag": response["ETag"]}
        part.update({name: response[name] for name in _CHECKSUM_FIELDS if response.get(name)})
        self._parts.append(part)

    async def _wait(self, at_most: int) -> None:
        """Wait until at most `at_most` parts are in flight; the first failed part raises."""
        while len(self._in_flight) > at_most:
            done, _ = await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            self._in_flight -= done
            for task in done:
                task.result()

    async def complete(self) -> None:
        await self._wait(0)
        self._parts.sort(key=lambda part: int(part["PartNumber"]))
        await self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
        )

    async def abort(self) -> None:
        """Drop the parts sent so far, so nothing half-written stays in the bucket; best effort."""
        tasks, self._in_flight = self._in_flight, set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        try:
            await self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
        except Exception as exc:
            # The object never became visible; a bucket lifecycle rule or `abort_stale_uploads` frees the parts.
            logger.warning("could not abort multipart upload of %s: %s", self._key, exc)
