"""Alert channels through Apprise (one library for webhooks, Slack-compatible chat, e-mail and many more)."""

from __future__ import annotations

import logging

import apprise

# Apprise logs the URLs it sends to at debug level; they may hold a channel's secret.
logging.getLogger("apprise").setLevel(logging.WARNING)

_TYPES = {
    "info": apprise.NotifyType.INFO,
    "warning": apprise.NotifyType.WARNING,
    "critical": apprise.NotifyType.FAILURE,
}


class AppriseNotifier:
    """``engine.dispatch.Notifier``: one notification to one Apprise URL."""

    def notify(self, url: str, title: str, body: str, severity: str) -> bool:
        channel = apprise.Apprise()
        if not channel.add(url):
            raise ValueError("not a notification URL Apprise can send to (see its supported services)")
        return bool(
            channel.notify(title=title, body=body, notify_type=_TYPES.get(severity, apprise.NotifyType.INFO))
        )


def check_url(url: str) -> str | None:
    """The problem with a channel URL, or None when Apprise can send to it (no message is sent)."""
    return None if apprise.Apprise().add(url) else "not a notification URL Apprise can send to"
