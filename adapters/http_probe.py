"""HTTP probes against the services themselves: health checks (async, aiohttp) and smoke tests (sync).

HTTPS addresses are verified against ``ca_file`` (the environment's CA; the system's CAs when None): a
certificate that does not chain to it, or does not name the host, is a failed probe, never a pass.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from adapters.tls_files import client_context
from engine.models import Model

if TYPE_CHECKING:  # imported where used: a runner (smoke tests only) does not pay for aiohttp
    import aiohttp


class ProbeResult(Model):
    url: str
    healthy: bool
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None


async def probe(session: aiohttp.ClientSession, url: str, timeout_s: float) -> ProbeResult:
    """One GET; a timeout or a non-2xx answer is a failure."""
    import aiohttp

    started = time.monotonic()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            await response.read()
            latency = (time.monotonic() - started) * 1000
            return ProbeResult(
                url=url,
                healthy=200 <= response.status < 300,
                status=response.status,
                latency_ms=latency,
                error=None if response.status < 300 else f"HTTP {response.status}",
            )
    except TimeoutError:
        return ProbeResult(url=url, healthy=False, error=f"timed out after {timeout_s:g}s")
    except aiohttp.ClientError as error:
        return ProbeResult(url=url, healthy=False, error=type(error).__name__ + ": " + str(error)[:200])


async def probe_all(urls: list[str], timeout_s: float, ca_file: str | None = None) -> list[ProbeResult]:
    """Every URL at once; bounded by ``timeout_s`` each; HTTPS verified against ``ca_file``."""
    import aiohttp

    connector = aiohttp.TCPConnector(ssl=client_context(ca_file))
    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(probe(session, url, timeout_s) for url in urls)))


def _get(url: str, timeout_s: float, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            response.read()
            return 200 <= response.status < 400
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError):
        return False


class HttpSmokeTester:
    """Sends smoke requests straight to a revision's replicas, before it gets any user traffic. An endpoint
    is ``host:port`` (plain HTTP, as replicas listen) or a URL base (``https://host:port``, verified against
    ``ca_file``)."""

    def __init__(self, timeout_s: float = 2.0, parallel: int = 8, ca_file: str | None = None) -> None:
        self.timeout_s = timeout_s
        self.parallel = parallel
        self.context = client_context(ca_file)

    def smoke(self, endpoints: list[str], path: str, count: int) -> tuple[int, int]:
        bases = [e if "://" in e else f"http://{e}" for e in endpoints]
        urls = [f"{bases[i % len(bases)]}{path}" for i in range(count)]
        with ThreadPoolExecutor(max_workers=min(self.parallel, count)) as pool:
            results = list(pool.map(lambda url: _get(url, self.timeout_s, self.context), urls))
        ok = sum(results)
        return ok, len(results) - ok


class HttpChecker:
    """Pipeline validate stages: one GET, judged on its status and (optionally) a text in the body."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def check(self, url: str, expect_status: int, contains: str | None, timeout_s: float) -> str | None:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                body = await response.text(errors="replace")
        except TimeoutError:
            return f"timed out after {timeout_s:g}s"
        except aiohttp.ClientError as error:
            return f"{type(error).__name__}: {str(error)[:200]}"
        if response.status != expect_status:
            return f"HTTP {response.status}, expected {expect_status}"
        if contains is not None and contains not in body:
            return f"the answer does not contain {contains!r}"
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
