"""HTTP probes against the services themselves: health checks (async, aiohttp) and smoke tests (sync)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import aiohttp

from engine.models import Model


class ProbeResult(Model):
    url: str
    healthy: bool
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None


async def probe(session: aiohttp.ClientSession, url: str, timeout_s: float) -> ProbeResult:
    """One GET; a timeout or a non-2xx answer is a failure."""
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


async def probe_all(urls: list[str], timeout_s: float) -> list[ProbeResult]:
    """Every URL at once; bounded by ``timeout_s`` each."""
    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(probe(session, url, timeout_s) for url in urls)))


def _get(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            response.read()
            return 200 <= response.status < 400
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError):
        return False


class HttpSmokeTester:
    """Sends smoke requests straight to a revision's replicas, before it gets any user traffic."""

    def __init__(self, timeout_s: float = 2.0, parallel: int = 8) -> None:
        self.timeout_s = timeout_s
        self.parallel = parallel

    def smoke(self, endpoints: list[str], path: str, count: int) -> tuple[int, int]:
        urls = [f"http://{endpoints[i % len(endpoints)]}{path}" for i in range(count)]
        with ThreadPoolExecutor(max_workers=min(self.parallel, count)) as pool:
            results = list(pool.map(lambda url: _get(url, self.timeout_s), urls))
        ok = sum(results)
        return ok, len(results) - ok


class HttpChecker:
    """Pipeline validate stages: one GET, judged on its status and (optionally) a text in the body."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def check(self, url: str, expect_status: int, contains: str | None, timeout_s: float) -> str | None:
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
