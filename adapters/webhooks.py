"""HTTP webhooks: one JSON POST per call (engine/hooks.py decides when, what and how often)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

USER_AGENT = "deploy-orchestrator-hooks/1"


class HttpWebhookSender:
    """``engine.hooks.WebhookSender`` over urllib: the status code of any answer, OSError when none came."""

    def post(self, url: str, body: bytes, timeout_s: float) -> int:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read(65_536)  # the body is not used: read a bounded part of it
                return int(response.status)
        except urllib.error.HTTPError as error:  # an answer, only not a 2xx one
            error.close()
            return int(error.code)
        except urllib.error.URLError as error:
            if isinstance(error.reason, socket.timeout | TimeoutError):
                raise TimeoutError(str(error.reason)) from None
            if isinstance(error.reason, OSError):
                raise error.reason from None
            raise OSError(str(error.reason)) from None
