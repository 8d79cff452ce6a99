"""URL -> zarr store, plus the few byte-level operations zarr does not offer.

All I/O goes through the zarr store (so credentials, endpoints and connection pools are
configured once, through fsspec's ``storage_options`` or the usual environment variables),
and runs on zarr's event loop. What zarr lacks and we need: an *exclusive create* (for shard
claims and manifest entries), and byte-range reads of a shard object (for ``read_prefix``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from zarr.abc.store import RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as _zarr_sync
from zarr.storage import FsspecStore, LocalStore

from .errors import StoreAccessError

T = TypeVar("T")

# Async fsspec filesystems we created (fsspec's instance cache holds them too); their HTTP
# sessions are closed at exit, on zarr's loop before zarr stops it, so interpreters do not
# end with aiohttp's "Unclosed client session" noise.
_ASYNC_FILESYSTEMS: dict[int, Any] = {}


@atexit.register
def _close_sessions() -> None:
    for fs in list(_ASYNC_FILESYSTEMS.values()):
        client = getattr(fs, "_s3", None)  # s3fs; other backends clean up on their own
        if client is not None:
            with contextlib.suppress(Exception):  # best effort while the interpreter exits
                _zarr_sync(client.close(), timeout=2)


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine on zarr's I/O loop from synchronous code."""
    return _zarr_sync(coro)  # type: ignore[arg-type]


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> Path:
    return Path(url.removeprefix("file://")).expanduser().absolute()


class Location:
    """Where an archive lives: a zarr store rooted at the archive URL."""

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None = None, read_only: bool = False
    ) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.read_only = read_only
        self.store: Store
        if is_local(url):
            if self.storage_options:
                raise ValueError(f"{url}: storage_options are not used for local paths")
            self.local_root: Path | None = local_path(url)
            self.store = LocalStore(self.local_root, read_only=read_only)
        else:
            self.local_root = None
            self.store = FsspecStore.from_url(
                url, storage_options=self.storage_options or None, read_only=read_only
            )
            _ASYNC_FILESYSTEMS.setdefault(id(self.store.fs), self.store.fs)

    # -- probes -------------------------------------------------------------------------
    def exists_at_all(self) -> bool:
        """Whether anything at all is stored under the URL (guards ``create``)."""
        if self.local_root is not None:
            return self.local_root.exists() and (
                not self.local_root.is_dir() or any(self.local_root.iterdir())
            )

        assert isinstance(self.store, FsspecStore)
        fs = self.store.fs
        if hasattr(fs, "_call_s3"):  # s3fs: one ListObjectsV2 of at most one key
            bucket, _, key = self.store.path.strip("/").partition("/")
            prefix = key.rstrip("/") + "/" if key else ""

            async def _one() -> bool:
                out = await fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
                return bool(out.get("KeyCount") or out.get("Contents"))

            return run(_one())

        async def _any() -> bool:
            async for _ in self.store.list_prefix(""):
                return True
            return False

        return run(_any())

    def access_error(self, exc: BaseException, doing: str,
                     writing: bool = False) -> StoreAccessError:
        """``exc`` (from the store, while ``doing`` something) as one line saying what is
        wrong: a missing bucket, refused credentials, an unreachable endpoint, a read-only
        bucket; else the error itself. See :func:`store_problem`."""
        reason, what = store_problem(exc, writing=writing)
        if reason == "other" and self.local_root is None and isinstance(exc, PermissionError):
            # A HEAD answers a bare 403; one listing request says whether it is the
            # credentials or a missing permission.
            try:
                self.exists_at_all()
                what = "access denied (the credentials may not read this)"
                reason = "denied"
            except Exception as e:  # noqa: BLE001  (classified below)
                reason, what = store_problem(e, writing=False)
        if reason == "no-bucket":
            what = f"the bucket {_bucket(self.url)!r} does not exist (create it first)"
        return StoreAccessError(f"{self.url}: cannot {doing}: {what}", reason)

    def root_missing(self) -> bool:
        """True for a local path that does not exist (opening must not create it)."""
        return self.local_root is not None and not self.local_root.is_dir()

    # -- async byte operations -----------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        """A whole object, or None if there is none. On S3 one GET: s3fs would send a HEAD
        first (to split big objects into concurrent ranges), and on a missing key a HEAD
        404 then a listing; our objects are small, and a miss is an answer."""
        if self.local_root is None and hasattr(getattr(self.store, "fs", None), "_call_s3"):
            assert isinstance(self.store, FsspecStore)
            path = f"{self.store.path.rstrip('/')}/{key}"
            try:
                return await self.store.fs._cat_file(path, max_concurrency=1)
            except FileNotFoundError:
                return None
        buf = await self.store.get(key, default_buffer_prototype())
        return None if buf is None else buf.to_bytes()

    async def get_range(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)`` of an object: one ranged GET on object stores."""
        buf = await self.store.get(key, default_buffer_prototype(), RangeByteRequest(start, end))
        return None if buf is None else buf.to_bytes()

    async def get_suffix(self, key: str, n: int) -> bytes | None:
        buf = await self.store.get(key, default_buffer_prototype(), SuffixByteRequest(n))
        return None if buf is None else buf.to_bytes()

    async def set(self, key: str, data: bytes) -> None:
        await self.store.set(key, default_buffer_prototype().buffer.from_bytes(data))

    async def delete(self, key: str) -> None:
        await self.store.delete(key)

    async def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (recursive); an absent prefix lists as empty."""
        if self.local_root is not None and not (self.local_root / prefix).exists():
            return []
        return [k async for k in self.store.list_prefix(prefix)]

    async def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist; return whether this call created it.

        Atomic on local disks (link(2) of a temp file), fsspec's memory filesystem, and S3
        servers that honour ``If-None-Match: *`` (AWS since 2024, Ceph RGW - checked
        against the test server). Other fsspec backends fall back to check-then-write,
        which is documented as racy; deterministic shard partitioning is the first line
        of defence anyway.
        """
        if self.read_only:
            raise PermissionError(f"{self.url} is opened read-only")
        if self.local_root is not None:
            return await asyncio.to_thread(_create_local, self.local_root / key, data)
        assert isinstance(self.store, FsspecStore)
        fs, path = self.store.fs, f"{self.store.path.rstrip('/')}/{key}"
        try:
            await fs._pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except TypeError:  # backend without mode="create": best effort
            if await self.store.exists(key):
                return False
            await self.set(key, data)
            return await self.get(key) == data
        except OSError:
            # s3fs maps Ceph's PreconditionFailed (no "Condition" field) to EINVAL.
            if await self.store.exists(key):
                return False
            raise


def _create_local(path: Path, data: bytes) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # fails if path exists: the atomic step
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


# -- store errors as one line ----------------------------------------------------------------
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "AuthorizationHeaderMalformed", "InvalidClientTokenId", "UnrecognizedClientException",
}
_CONNECT_ERRORS = {
    "EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
    "ClientConnectorError", "ServerDisconnectedError", "ConnectionRefusedError",
    "gaierror", "ProxyConnectionError",
}


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 12:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _bucket(url: str) -> str:
    return urlsplit(url).netloc


def store_problem(exc: BaseException, writing: bool = False) -> tuple[str, str]:
    """``(reason, description)`` of an error a store raised, from its type and the S3
    error code it carries (s3fs keeps botocore's error as the cause); no botocore import.
    Reasons: ``no-bucket``, ``credentials``, ``unreachable``, ``denied``, ``other``."""
    chain = _causes(exc)
    codes = set()
    endpoint = None
    for e in chain:
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            codes.add(str((resp.get("Error") or {}).get("Code")))
        names = {c.__name__ for c in type(e).__mro__}
        if names & _CONNECT_ERRORS:
            kw = getattr(e, "kwargs", None)
            url = kw.get("endpoint_url") if isinstance(kw, dict) else None
            if url and endpoint is None:
                parts = urlsplit(str(url))
                endpoint = f"{parts.scheme}://{parts.netloc}" if parts.netloc else str(url)
            codes.add("<connect>")
    if "<connect>" in codes:
        where = f"the endpoint {endpoint}" if endpoint else "the store's endpoint"
        return "unreachable", (
            f"cannot connect to {where} (is the server up? check AWS_ENDPOINT_URL or "
            "storage_options client_kwargs.endpoint_url)"
        )
    if any(type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError") for e in chain):
        return "credentials", (
            "no credentials found; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
            "storage_options key/secret"
        )
    if codes & _CREDENTIAL_CODES:
        code = sorted(codes & _CREDENTIAL_CODES)[0]
        return "credentials", (
            f"the server refused the credentials ({code}); check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or storage_options key/secret"
        )
    if "NoSuchBucket" in codes:
        return "no-bucket", "the bucket does not exist (create it first)"
    if "AccessDenied" in codes or "AllAccessDisabled" in codes:
        if writing:
            return "denied", (
                "access denied when writing (a read-only bucket, or credentials without "
                "write permission)"
            )
        return "denied", "access denied (the credentials may not read this)"
    kind = type(exc).__name__
    return "other", f"{kind}: {exc}" if str(exc) not in ("", "None") else kind
