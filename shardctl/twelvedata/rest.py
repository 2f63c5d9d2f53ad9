"""Twelve Data's REST API through the ``twelvedata`` package, with the key kept out of every URL.

``rest_client(rest_url, api_key)`` returns a ``TDClient`` whose HTTP client
sends the key in the ``Authorization: apikey`` header (never ``?apikey=``,
so neither urllib3's debug lines nor exception texts carry it), never routes
a loopback URL through a proxy from the environment, and raises
``RestCallError`` (with the error's ``code``) for every error answer.
Building a ``TDClient`` makes one blocking request (``/technical_indicators``);
build it only when a request is about to go.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twelvedata import TDClient
from twelvedata.exceptions import TwelveDataError
from twelvedata.http_client import DefaultHttpClient

from shardctl.logs import MASK, mask_secrets

__all__ = ["HeaderKeyClient", "RestCallError", "rest_client"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RestCallError(TwelveDataError):
    """A Twelve Data error answer with its ``code`` (from the body, else the HTTP status)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class HeaderKeyClient(DefaultHttpClient):
    """The package's HTTP client, with the key in a header instead of the URL and typed errors."""

    def __init__(self, base_url: str, api_key: str) -> None:
        super().__init__(base_url)
        self.session.headers["Authorization"] = f"apikey {api_key}"
        if urlsplit(base_url).hostname in _LOOPBACK:
            self.session.trust_env = False  # never route 127.0.0.1 through a proxy from the environment

    def get(self, relative_url: str, *args: Any, **kwargs: Any) -> Any:
        params = dict(kwargs.get("params") or {})
        params.pop("apikey", None)
        kwargs["params"] = params
        return super().get(relative_url, *args, **kwargs)

    @staticmethod
    def _raise_error(error_code: int, message: str) -> None:
        raise RestCallError(int(error_code), str(message))


def rest_client(rest_url: str, api_key: str) -> Any:
    """A ``TDClient`` for ``rest_url`` that sends ``api_key`` in a header (one blocking request to build)."""
    return TDClient(api_key, base_url=rest_url, http_client=HeaderKeyClient(rest_url, api_key))


def refused(rest_url: str, path: str, exc: RestCallError, api_key: str) -> str:
    """One line saying why Twelve Data refused ``path``; the key is masked even when the server echoes it."""
    why = "the API key was refused" if exc.code == 401 else f"error {exc.code}"
    return f"Twelve Data ({rest_url}) refused {path}: {why}: {server_text(exc, api_key)}"


def server_text(exc: BaseException, api_key: str) -> str:
    """The start of an error's text, with every secret and ``api_key`` masked."""
    return mask_secrets(str(exc)).replace(api_key, MASK)[:160]
