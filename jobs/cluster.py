"""The Ray job server, as `submit`, `jobs` and `schedule` reach it.

One address rule (--address, else $RAY_ADDRESS; never a silent local Ray), Ray's own token
(RAY_AUTH_TOKEN, else the file named by RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; none when
RAY_AUTH_MODE=disabled), a timeout on every request, and one line for each way a call can fail:
`Unreachable` (no answer) or `Refused` (the server answered no: authentication). Both are
`UserError`s, so a command prints one line and exits 2, and a scheduler tick records them.

A job server that answers is not yet one that runs jobs: Ray hands a submitted job to the job
agent of the head node (a process of the head's dashboard agent), which registers with the cluster
only once its HTTP server is listening. Until then, and for good when that server cannot bind its
port (Ray's fixed 52365 by default, which any other Ray on the same machine may already hold: the
agent then stays alive without it), every submit is refused with "No available agent". Ray has no
readiness call for it; `wait_for_agent` asks the state API for the head's log files, which Ray
lists through that same registration, so the wait ends exactly when a submit can succeed, and
when it runs out says which log on the head tells why.

`follow` streams a job's log until the job ends. The job's status decides the end, not the log
stream: a dropped stream is reopened (skipping what was already written) for as long as the job
runs, and only contact lost for LOST_CONTACT_S ends the wait early.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from pathlib import Path

from pipelines.redaction import redact
from pipelines.errors import UserError, first_line

REQUEST_TIMEOUT_S = 60.0  # seconds to connect, and again for each wait on the server's answer
POLL_S = 5.0  # seconds between status checks while following a job
DRAIN_S = 30.0  # seconds a finished job's log stream gets to deliver its last lines
LOST_CONTACT_S = 900.0  # `--wait` gives up after this long without one answer from the server
AGENT_WAIT_S = 60.0  # default wait for the head's job agent (`--agent-wait`); a fresh head needs ~5-20 s
AGENT_POLL_S = 1.0  # seconds between readiness checks

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
TOKEN_HELP = ("set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head node prints it), "
              "or save it in ~/.ray/auth_token or a file named by RAY_AUTH_TOKEN_PATH")


class ClusterError(UserError):
    """A call to the job server that did not get a usable answer."""


class Unreachable(ClusterError):
    """No answer: connection refused or dropped, DNS, or no reply within the timeout."""


class Refused(ClusterError):
    """The server answered and refused: its token authentication did not accept us."""


class AgentNotReady(ClusterError):
    """The job server answers, but the head's job agent, which runs submitted jobs, has not
    registered within the wait. Nothing was submitted."""


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_ADDRESS; never a silent local Ray. Adds http:// when missing."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    if address == "auto" or "://" not in address and address.endswith(":6379"):
        raise UserError(f"--address {redact(address)}: give the job server's http://HOST:8265 address, "
                        "not the GCS port")
    return address if "://" in address else f"http://{address}"


def token_source(environ=os.environ) -> str:
    """Where Ray's token loader takes the token from, in its own order (for messages)."""
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return "none (RAY_AUTH_MODE=disabled here)"
    if environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={environ['RAY_AUTH_TOKEN_PATH']}"
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else "none (no RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"


def auth_headers(environ=os.environ) -> dict[str, str]:
    """The Authorization header with Ray's token, found by Ray's own loader; empty when there is no
    token or RAY_AUTH_MODE=disabled. Sent whenever a token exists, as `ray start` does, not only
    under RAY_AUTH_MODE=token: the job server is already trusted with the job's credentials."""
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    try:
        return dict(AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True))
    except AuthenticationError as err:  # e.g. RAY_AUTH_TOKEN_PATH names a missing or empty file
        raise UserError(f"Ray token: {err.message}") from None


def _refusal(url: str, status: int) -> Refused:
    source = token_source()
    if status == 401:
        return Refused(f"--address {redact(url)}: the Ray job server refused the request: it requires a token and "
                       f"none was sent (token: {source}); {TOKEN_HELP}")
    return Refused(f"--address {redact(url)}: the Ray job server refused the token from {source} (not this "
                   f"cluster's); {TOKEN_HELP}")


@functools.cache
def _client_class():
    """JobSubmissionClient with a timeout on every request (Ray sets none, so a hung head would
    block forever) and its failures as Unreachable / Refused."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    class Client(JobSubmissionClient):
        def __init__(self, address: str, timeout_s: float):
            self.timeout_s = timeout_s
            super().__init__(address, headers=auth_headers())

        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", self.timeout_s)
            try:
                return super()._do_request(method, endpoint, **kwargs)
            except AuthenticationError as err:
                raise _refusal(self._address, 403 if "Authentication failed" in err.message else 401) from None
            except requests.Timeout:
                raise Unreachable(f"--address {redact(self._address)}: the Ray job server did not answer within "
                                  f"{self.timeout_s:g} s") from None
            except requests.RequestException as err:
                raise Unreachable(f"--address {redact(self._address)}: cannot reach a Ray job server "
                                  f"({redact(first_line(err))})") from None

    return Client


def connect(address: str | None, timeout_s: float = REQUEST_TIMEOUT_S):
    """A JobSubmissionClient for the address, every request bounded by `timeout_s`."""
    url = resolve_address(address)
    try:
        return _client_class()(url, timeout_s)
    except ClusterError:
        raise
    except (ConnectionError, RuntimeError) as err:  # Ray's own wording of a refused connection or version
        raise Unreachable(f"--address {redact(url)}: cannot reach a Ray job server ({redact(first_line(err))})") from None


def _get_json(client, endpoint: str):
    """GET a dashboard endpoint: its JSON, or None when the server answered with an error status."""
    response = client._do_request("GET", endpoint)
    return response.json() if response.status_code == 200 else None


def head_node_id(client) -> str | None:
    """The head node's id, from the state API (None while the dashboard cannot list nodes yet)."""
    found = _get_json(client, "/api/v0/nodes?filter_keys=is_head_node&filter_predicates=%3D&filter_values=True"
                              "&limit=1&detail=1")
    nodes = ((found or {}).get("data") or {}).get("result", {}).get("result") or []
    return nodes[0]["node_id"] if nodes else None


def agent_ready(client) -> bool:
    """Whether the head's job agent has registered, so that a submit now is handed to it: the
    state API lists a node's log files through the agent the cluster has registered for that
    node, the registration the job server looks up to submit a job."""
    head = head_node_id(client)
    return head is not None and _get_json(client, f"/api/v0/logs?node_id={head}&glob=dashboard_agent.log") is not None


def agent_log(client) -> str:
    """Where the head keeps its job agent's log, as precise as the head can say."""
    try:
        head = head_node_id(client)
        raylet = ((_get_json(client, f"/nodes/{head}") or {}).get("data") or {}).get("detail", {}).get("raylet", {}) \
            if head else {}
    except (ClusterError, ValueError):
        raylet = {}
    if raylet.get("sessionDir"):
        return f"{raylet['sessionDir']}/logs/dashboard_agent.log on the head node"
    return "logs/dashboard_agent.log in the head node's Ray session folder (/tmp/ray/session_latest by default)"


def wait_for_agent(client, wait_s: float = AGENT_WAIT_S, *, poll_s: float = AGENT_POLL_S) -> float:
    """Return once the head's job agent is ready (the seconds it took); AgentNotReady after
    `wait_s`, naming the agent's log on the head. A job server that does not answer raises
    Unreachable or Refused as every call does."""
    start = time.monotonic()
    while not agent_ready(client):
        if time.monotonic() - start >= wait_s:
            raise agent_not_ready(client, wait_s)
        time.sleep(poll_s)
    return time.monotonic() - start


def agent_not_ready(client, wait_s: float) -> AgentNotReady:
    return AgentNotReady(
        f"--address {redact(client._address)}: the Ray job server answers, but its head node's job agent is "
        f"not ready after {wait_s:g} s, so no job can be submitted; see {agent_log(client)} (an agent whose HTTP "
        f"port, 52365 by default, is held by another process never gets ready); --agent-wait SECONDS waits longer")


def _unknown(err: RuntimeError) -> bool:
    text = str(err)
    return "404" in text or "does not exist" in text or "not found" in text.lower()


def job_status(client, submission_id: str) -> str | None:
    """PENDING/RUNNING/SUCCEEDED/FAILED/STOPPED, or None when the cluster does not know the id."""
    try:
        return str(client.get_job_status(submission_id).value)
    except RuntimeError as err:
        if _unknown(err):
            return None
        raise


def job_info(client, submission_id: str):
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as err:
        if _unknown(err):
            raise UserError(f"job {submission_id}: no such job on this cluster") from None
        raise


def follow(client, submission_id: str, out=None, *, poll_s: float = POLL_S,
           lost_contact_s: float = LOST_CONTACT_S) -> str:
    """Write the job's log to `out` until the job ends; returns its terminal status. Raises
    Unreachable after `lost_contact_s` without an answer (the job itself may still run)."""
    return asyncio.run(_follow(client, submission_id, out or sys.stdout, poll_s, lost_contact_s))


async def _tail(client, submission_id: str, out, written: list[int]) -> None:
    """One log stream. Every stream starts at the log's beginning: skip what is already out."""
    seen = 0
    async for chunk in client.tail_job_logs(submission_id):
        new = chunk[max(0, written[0] - seen):]
        seen += len(chunk)
        if new:
            out.write(new)
            out.flush()
            written[0] += len(new)


async def _follow(client, submission_id: str, out, poll_s: float, lost_contact_s: float) -> str:
    written = [0]  # characters of the log already written
    last_answer = time.monotonic()
    lost = ""
    while True:
        stream = asyncio.ensure_future(_tail(client, submission_id, out, written))
        status = None
        try:
            while True:
                await asyncio.wait({stream}, timeout=poll_s)
                try:
                    status = await asyncio.to_thread(job_status, client, submission_id)
                except (ClusterError, RuntimeError) as err:  # no answer, or the server erred: ask again
                    if time.monotonic() - last_answer > lost_contact_s:
                        raise Unreachable(f"job {submission_id}: no answer from the job server for "
                                          f"{lost_contact_s:g} s ({first_line(err)}); the job may still be "
                                          f"running: alexnet jobs status {submission_id}") from None
                    if not lost:
                        lost = first_line(err)
                        print(f"[alexnet] lost contact with the job server ({lost}); still following "
                              f"{submission_id}", file=sys.stderr, flush=True)
                    continue
                last_answer = time.monotonic()
                if status is None:
                    raise UserError(f"job {submission_id}: no such job on this cluster")
                if lost:  # contact is back: a stream opened before the loss may be half-dead
                    lost = ""
                    print(f"[alexnet] job server answers again; {submission_id} is {status}", file=sys.stderr,
                          flush=True)
                    break
                if status in TERMINAL:
                    await asyncio.wait({stream}, timeout=DRAIN_S)  # the server ends the stream after the last line
                    break
                if stream.done():
                    break  # the stream ended while the job goes on: open another
        finally:
            stream.cancel()
            ended = (await asyncio.gather(stream, return_exceptions=True))[0]
        if isinstance(ended, Exception) and not isinstance(ended, _stream_errors()):
            raise ended  # a bug, not a dropped stream
        if status in TERMINAL:
            _write_rest(client, submission_id, out, written)
            return status
        await asyncio.sleep(poll_s)  # then reopen the stream: the job goes on


def _stream_errors() -> tuple[type[BaseException], ...]:
    """How a log stream ends early: dropped or refused connections, a server that closed it."""
    import aiohttp

    return aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError, RuntimeError, ClusterError


def _write_rest(client, submission_id: str, out, written: list[int]) -> None:
    """What the stream did not deliver (it dropped near the end): the stored log past `written`."""
    try:
        rest = client.get_job_logs(submission_id)[written[0]:]
    except (ClusterError, RuntimeError) as err:
        print(f"[alexnet] the end of the log could not be read ({first_line(err)}): alexnet jobs logs "
              f"{submission_id}", file=sys.stderr)
        return
    if rest:
        out.write(rest)
        out.flush()


def wait_terminal(client, submission_id: str, timeout_s: float, poll_s: float = 1.0) -> str:
    """The job's status once terminal, or its last status when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = job_status(client, submission_id)
        if status in TERMINAL or time.monotonic() > deadline:
            return status or "UNKNOWN"
        time.sleep(poll_s)
