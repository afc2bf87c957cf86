"""Alert channels through Apprise (one library for webhooks, Slack-compatible chat, e-mail and many more).

Apprise is imported on first use: importing it costs more than 100 ms of CPU, and every process that loads
the queen's class (a runner or DO-006 making a handle to it) imports this module without sending anything.
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType

_SEVERITY = {"info": "INFO", "warning": "WARNING", "critical": "FAILURE"}


@functools.cache
def _apprise() -> ModuleType:
    import apprise

    # Apprise logs the URLs it sends to at debug level; they may hold a channel's secret.
    logging.getLogger("apprise").setLevel(logging.WARNING)
    return apprise


class AppriseNotifier:
    """``engine.dispatch.Notifier``: one notification to one Apprise URL."""

    def notify(self, url: str, title: str, body: str, severity: str) -> bool:
        apprise = _apprise()
        channel = apprise.Apprise()
        if not channel.add(url):
            raise ValueError("not a notification URL Apprise can send to (see its supported services)")
        notify_type = getattr(apprise.NotifyType, _SEVERITY.get(severity, "INFO"))
        return bool(channel.notify(title=title, body=body, notify_type=notify_type))


def check_url(url: str) -> str | None:
    """The problem with a channel URL, or None when Apprise can send to it (no message is sent)."""
    return None if _apprise().Apprise().add(url) else "not a notification URL Apprise can send to"
