"""``swarmlm.Client``: the Python SDK, for plain (non-async) code (``swarmlm.AsyncClient`` is the async one).

    from swarmlm import Client
    with Client(bootstrap=["/ip4/127.0.0.1/tcp/4001/p2p/12D3..."]) as c:
        for text in c.generate("What is the capital of France?", max_tokens=32, stop=["."]):
            print(text, end="", flush=True)
        print(c.last_summary.route, c.last_summary.verified_tokens)

The client is a light libp2p peer: it joins through the bootstrap addresses, reads the replicated
swarm state (it publishes nothing) and runs generations through the swarm with an ``AsyncClient``
(``node/client/engine.py``) on a trio event loop in a background thread. Errors are ``SwarmError`` subclasses with a clear
message (``UnknownModel``, ``NoRouteError``, ``GenerationError``...), never a trio exception group.
Sampling arguments take OpenAI's names too (``max_tokens``, ``stop`` as a string or list, ``n=1``);
an unknown keyword is refused (``node/client/sampling_args.py``). A bootstrap address without
``/p2p/`` or one nobody answers at fails at once, with one message.

Verification is on by default (docs/RELIABILITY.md): servers new to this client are checked on
every step, established ones on ``check_fraction`` of the steps (0 turns it off, 1 checks every
step; per call too); ``last_summary.verified_tokens`` says how many tokens every check confirmed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Iterator

import trio

from swarmlm.crypto.identity import Identity
from swarmlm.errors import SwarmError, root_cause
from swarmlm.net.host import HostConfig, SwarmHost
from swarmlm.net.state_service import StateService
from swarmlm.node.client.engine import AsyncClient
from swarmlm.node.client.options import ClientOptions
from swarmlm.node.client.sampling_args import sampling_params
from swarmlm.node.generation import GenerationRequest, GenerationSummary, ModelCard

_DONE = object()


class ClientError(SwarmError):
    pass


class Client:
    def __init__(self, bootstrap: list[str] | str | None = None, *, ee_key: str | None = None,
                 join_timeout_s: float = 30.0, listen: str = "/ip4/0.0.0.0/tcp/0", wire_dtype: str | None = None,
                 check_fraction: float | None = None, route_mode: str = "latency") -> None:
        if bootstrap is None:  # like `swarmlm ask`: $SWARMLM_BOOTSTRAP (comma-separated)
            bootstrap = [a.strip() for a in os.environ.get("SWARMLM_BOOTSTRAP", "").split(",") if a.strip()]
        self.bootstrap = [bootstrap] if isinstance(bootstrap, str) else list(bootstrap)
        if not self.bootstrap:
            raise ClientError("Client needs a bootstrap address (/ip4/.../tcp/.../p2p/...), or $SWARMLM_BOOTSTRAP")
        for addr in self.bootstrap:
            if not addr.startswith("/") or "/p2p/" not in addr:
                raise ClientError(f"bootstrap address {addr!r} needs the form /ip4/HOST/tcp/PORT/p2p/PEER_ID: "
                                  "copy the whole address a node prints (its ready file, `swarmlm testnet up`)")
        self.ee_key = ee_key
        self.wire_dtype = wire_dtype  # "fp16"/"bf16": activations travel down-cast between servers
        if check_fraction is not None and not 0.0 <= check_fraction <= 1.0:
            raise ClientError(f"check_fraction must be between 0 and 1, got {check_fraction}")
        self.check_fraction = check_fraction  # None: the default (docs/RELIABILITY.md); 0: no verification
        self.route_mode = route_mode  # "latency": fastest chain; "throughput": spread requests over replicas
        self.listen = listen
        self.last_summary: GenerationSummary | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: Any = None
        self._stop: Any = None
        self._engine: Any = None
        self._thread = threading.Thread(target=self._thread_main, name="swarmlm-client", daemon=True)
        self._thread.start()
        if not self._ready.wait(join_timeout_s + 10):
            raise ClientError("the client's network thread did not start")
        if self._error is not None:
            raise self._error
        self._wait_joined(join_timeout_s)

    # -- the trio side -----------------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the caller thread: the failure itself, not trio's group
            self._error = root_cause(exc)
            self._ready.set()

    async def _main(self) -> None:
        host = SwarmHost(Identity.generate(), HostConfig(listen=[self.listen], bootstrap=self.bootstrap,
                                                         client_only=True))  # joins, or fails, first
        state = StateService(host, None, publish=False)
        self._stop = trio.Event()
        async with host.running():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(state.run)
                # mode="consensus": a round run by a node hosting the whole model (RPC ``ask``)
                options = ClientOptions(wire_dtype=self.wire_dtype, route_mode=self.route_mode)
                if self.check_fraction is not None:
                    options.check_fraction = self.check_fraction
                self._engine = AsyncClient(host, state, options, ee_key=self.ee_key)
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

    def _run(self, afn: Any, *args: Any) -> Any:
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def _wait_joined(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._run(self._engine.list_models):
                return
            time.sleep(0.2)
        raise ClientError(f"joined the swarm through {self.bootstrap[0]}, but no node there serves a model "
                          f"(waited {timeout:.0f} s): start one with --model, or check the node's log")

    # -- public API ---------------------------------------------------------------------------------
    def models(self) -> list[ModelCard]:
        return self._run(self._engine.list_models)

    def _default_model(self, model: str | None) -> str:
        return model or self._run(self._engine.default_model)

    def route(self, model: str | None = None, max_length: int = 512) -> Any:
        """The chain of servers a generation of ``model`` would use now."""
        model = self._default_model(model)

        async def plan() -> Any:
            return self._engine.plan(model, max_length)

        return self._run(plan)

    @property
    def options(self) -> ClientOptions:
        """The running client's options (e.g. ``speculative``); changes apply to the next generation."""
        if self._engine is None:
            raise ClientError("the client is not running (use it as a context manager)")
        return self._engine.options

    def generate(self, prompt: str, model: str | None = None, *, mode: str = "pipeline", k: int = 3,
                 check_fraction: float | None = None, **sampling: Any) -> Iterator[str]:
        """Stream the completion of ``prompt``: yields text pieces as they are generated.

        ``mode="consensus"``: ``k`` nodes hosting the whole model answer, their peers judge, and the
        winning answer comes back as one piece; ``last_summary.round_id`` / ``.scores`` tell the rest.
        ``check_fraction`` overrides the client's for this call.
        """
        params = sampling_params(sampling)
        return self._stream(GenerationRequest(model=self._default_model(model), prompt=prompt, params=params,
                                              mode=mode, consensus_k=k, check_fraction=check_fraction))

    def chat(self, messages: list[dict[str, str]], model: str | None = None, stream: bool = False, *,
             mode: str = "pipeline", k: int = 3, check_fraction: float | None = None, **sampling: Any) -> Any:
        """Chat with the model's template; returns the answer text (or an iterator with ``stream``).
        ``mode="consensus"`` and ``check_fraction`` as in ``generate``."""
        params = sampling_params(sampling)
        it = self._stream(GenerationRequest(model=self._default_model(model), messages=list(messages),
                                            params=params, mode=mode, consensus_k=k, check_fraction=check_fraction))
        return it if stream else "".join(it)

    def _stream(self, request: GenerationRequest) -> Iterator[str]:
        q: queue.Queue = queue.Queue()

        async def produce() -> None:
            try:
                async with self._engine.generate(request) as gen:
                    async for chunk in gen:
                        q.put(chunk.text)
                self.last_summary = gen.summary
                q.put(_DONE)
            except BaseException as exc:
                q.put(root_cause(exc))
                if isinstance(exc, trio.Cancelled):
                    raise

        def start() -> None:
            self._nursery.start_soon(produce)

        trio.from_thread.run_sync(start, trio_token=self._token)
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        if self._token is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
            self._thread.join(10)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
