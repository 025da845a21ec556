"""stackstac's reader for asset links that need a token (Planetary Computer's Azure Blob Storage),
signed when the file is opened: on the Dask worker, as the tile's round reads it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from stackstac.rio_reader import AutoParallelRioReader

from pipelines.load import expired_token_failure, sign_href


class SigningRioReader(AutoParallelRioReader):
    """stackstac's reader, signing its asset link (:func:`pipelines.load.sign_href`) as it
    opens the file, with a token valid for at least :data:`pipelines.load.SAS_MIN_TTL_S`. The
    graph, the scheduler and what is pickled hold the unsigned link, so a token never waits in
    a queue of tasks. A read refused (HTTP 403) once its token expired is transient
    (:func:`pipelines.load.expired_token_failure`): the retry opens the file with a new one."""

    url: str
    #: When the token of the last open expires (None: not opened yet, or no token).
    expiry: dt.datetime | None = None

    def _open(self) -> Any:
        href: str = self.url
        signed = sign_href(href)
        self.expiry = signed.expiry
        self.url = signed.href
        try:
            return super()._open()
        except Exception as exc:
            expired = expired_token_failure(href, signed.expiry, exc)
            if expired is None:
                raise
            raise expired from exc
        finally:
            self.url = href

    def read(self, window: Any, **kwargs: Any) -> Any:
        try:
            return super().read(window, **kwargs)
        except Exception as exc:
            expired = expired_token_failure(self.url, self.expiry, exc)
            if expired is None:
                raise
            raise expired from exc
