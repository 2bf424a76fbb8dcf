"""A closed browser tab is not an error: the server's event loop drops the "Task exception was
never retrieved ... WebSocketClosedError" traceback Tornado leaves when an update was still
being written to a tab that went away (Bokeh already forgets the session), and Bokeh's and
Panel's "Failed sending message as connection was closed" warnings go to debug level. Every
other unhandled exception still goes to the loop's default handler."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)
CLOSED_WARNING = "Failed sending message as connection was closed"
NOISY_LOGGERS = ("bokeh.server.views.ws", "panel.io.document")


class _DropClosedWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(CLOSED_WARNING)


def _closed_connection(exc: BaseException | None) -> bool:
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    return isinstance(exc, (WebSocketClosedError, StreamClosedError))


def quiet_closed_websockets(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` drop (log at debug level) unretrieved closed-connection errors; anything
    else goes to the handler it had before."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropClosedWarnings) for f in logger.filters):
            logger.addFilter(_DropClosedWarnings())
    previous = loop.get_exception_handler()
    if getattr(previous, "_attnlens_quiet", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if _closed_connection(context.get("exception")):
            log.debug("a browser tab closed while an update was being sent: %s", context.get("message"))
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler._attnlens_quiet = True
    loop.set_exception_handler(handler)
