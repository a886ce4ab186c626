"""Talking to the upstream model server: requests carry the server-side key and the guard's timeouts, and every
way it can fail becomes one UpstreamFailure with the status and message the client should get."""

from __future__ import annotations

import json

import httpx2

from constitutional.guard.settings import GuardSettings

# Upstream statuses whose headers the client needs to act on the error.
_PASSED_HEADERS = ("retry-after",)


class UpstreamFailure(Exception):
    """The upstream could not answer: `status` and `message` are what the client gets, `kind` labels the metric."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}


class Upstream:
    def __init__(self, client: httpx2.AsyncClient, settings: GuardSettings):
        self.client = client
        self.base = settings.upstream
        self.timeout = httpx2.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.read_timeout,
            pool=settings.connect_timeout,
        )
        self.headers = {"content-type": "application/json"}
        if settings.upstream_api_key is not None:
            self.headers["authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"

    async def open(self, method: str, path: str, body: bytes | None = None) -> httpx2.Response:
        """Send a request and return the response with its body unread (streamed); a failure raises."""
        request = self.client.build_request(
            method, f"{self.base}{path}", content=body, headers=self.headers, timeout=self.timeout
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx2.TimeoutException as err:
            raise self.timed_out(err) from None
        except httpx2.TransportError as err:
            raise UpstreamFailure(
                502, "connect", f"cannot reach the upstream model server at {self.base} ({_describe(err)})"
            ) from None
        if response.status_code >= 400:
            try:
                raw = await response.aread()
            except httpx2.HTTPError:
                raw = b""
            finally:
                await response.aclose()
            raise self.refused(response, raw)
        return response

    async def read(self, response: httpx2.Response) -> bytes:
        """The rest of a response's body, with the same failures mapped."""
        try:
            return await response.aread()
        except httpx2.TimeoutException as err:
            raise self.timed_out(err) from None
        except httpx2.TransportError as err:
            raise self.broken(err) from None
        finally:
            await response.aclose()

    def timed_out(self, err: httpx2.TimeoutException) -> UpstreamFailure:
        what = "did not accept a connection" if isinstance(err, httpx2.ConnectTimeout) else "stopped sending"
        return UpstreamFailure(
            504, "timeout", f"the upstream model server at {self.base} {what} within the guard's timeout ({err})"
        )

    def broken(self, err: httpx2.TransportError) -> UpstreamFailure:
        return UpstreamFailure(
            502, "broken_stream", f"the upstream model server at {self.base} broke off its answer ({_describe(err)})"
        )

    def refused(self, response: httpx2.Response, raw: bytes) -> UpstreamFailure:
        status = response.status_code
        detail = _error_message(raw) or response.reason_phrase or "no detail"
        headers = {name: response.headers[name] for name in _PASSED_HEADERS if name in response.headers}
        return UpstreamFailure(
            status, f"status_{status}", f"the upstream model server answered {status}: {detail}", headers
        )


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _error_message(raw: bytes) -> str | None:
    """The message of an OpenAI-style error body, or the start of whatever text came back."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = raw.decode("utf-8", "replace").strip()
        return text[:500] or None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return json.dumps(body)[:500]
