"""
Serve a chat model over HTTP: a single-page UI at /, token streaming over WebSocket (/ws) and Server-Sent Events
(POST /chat/completions), and /health.

    python -m scripts.chat_web -i sft --port 8000          # then open http://localhost:8000

Design choices:
- a pool of workers, one model replica per GPU (CPU: one, or --num-workers); a request waits in line for a free
  worker instead of failing, and /health shows how many are busy and how many wait
- generation runs in a worker thread and hands tokens to the event loop through a queue, so the server keeps
  answering while a model computes; a stop message or a client that goes away sets a flag the thread checks every
  token, and the worker goes back to the pool as soon as the thread returns
- requests are checked before they reach a worker: body size (413), JSON syntax (400), message count/length,
  roles, temperature/top_k/max_tokens ranges (422)
- user text is encoded as ordinary text, so typing "<|assistant_end|>" can never produce the special token
- text is streamed in whole UTF-8 characters (StreamDecoder)
"""
import argparse
import asyncio
import json
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from nanochat.engine import Engine, StreamDecoder

UI_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nanochat", "ui.html")


@dataclass
class Limits:
    max_body_bytes: int = 256 * 1024
    max_messages: int = 200
    max_message_chars: int = 8000
    max_total_chars: int = 32000
    max_max_tokens: int = 4096
    max_top_k: int = 200
    max_temperature: float = 2.0


@dataclass
class Defaults:
    temperature: float = 0.8
    top_k: int = 50
    max_tokens: int = 512


class RequestError(Exception):
    def __init__(self, status, detail):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Worker:
    id: int
    engine: Engine
    tokenizer: object
    device: str


class WorkerPool:
    """Workers wait in an asyncio.Queue; acquire() waits (queues) while all are busy."""

    def __init__(self, workers):
        self.workers = workers
        self.free = asyncio.Queue()
        for w in workers:
            self.free.put_nowait(w)
        self.waiting = 0
        self.served = 0
        # one thread per worker: at most len(workers) generations run at once
        self.executor = ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="nanochat-worker")

    async def acquire(self):
        self.waiting += 1
        try:
            return await self.free.get()
        finally:
            self.waiting -= 1

    def release(self, worker):
        self.served += 1
        self.free.put_nowait(worker)

    def status(self):
        return {"workers": len(self.workers), "available": self.free.qsize(), "waiting": self.waiting,
                "served": self.served, "devices": [w.device for w in self.workers]}


def validate(payload, limits: Limits, defaults: Defaults) -> dict:
    """A parsed JSON body -> clean request dict, or RequestError(422) saying what is wrong."""
    if not isinstance(payload, dict):
        raise RequestError(422, "body must be a JSON object")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(422, "'messages' must be a non-empty list")
    if len(messages) > limits.max_messages:
        raise RequestError(422, f"too many messages ({len(messages)} > {limits.max_messages})")
    total = 0
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise RequestError(422, f"message {i} needs a string 'content'")
        want = "user" if i % 2 == 0 else "assistant"
        if m.get("role") != want:
            raise RequestError(422, f"message {i} must have role {want!r} (user and assistant alternate, user first)")
        if not m["content"].strip():
            raise RequestError(422, f"message {i} is empty")
        if len(m["content"]) > limits.max_message_chars:
            raise RequestError(422, f"message {i} is too long ({len(m['content'])} > {limits.max_message_chars} chars)")
        total += len(m["content"])
        clean.append({"role": m["role"], "content": m["content"]})
    if total > limits.max_total_chars:
        raise RequestError(422, f"conversation too long ({total} > {limits.max_total_chars} chars)")
    if clean[-1]["role"] != "user":
        raise RequestError(422, "the last message must be from the user")

    def number(name, default, lo, hi, kind):
        v = payload.get(name, default)
        if v is None:
            v = default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and int(v) != v):
            raise RequestError(422, f"'{name}' must be a {kind.__name__}")
        if not lo <= v <= hi:
            raise RequestError(422, f"'{name}' must lie in [{lo}, {hi}], got {v}")
        return kind(v)

    seed = payload.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(422, "'seed' must be an integer")
    return dict(messages=clean,
                temperature=number("temperature", defaults.temperature, 0.0, limits.max_temperature, float),
                top_k=number("top_k", defaults.top_k, 0, limits.max_top_k, int),
                max_tokens=number("max_tokens", defaults.max_tokens, 1, limits.max_max_tokens, int),
                seed=seed if seed is not None else random.randrange(2 ** 31))


def parse_body(raw: bytes, limits: Limits, defaults: Defaults) -> dict:
    if len(raw) > limits.max_body_bytes:
        raise RequestError(413, f"request body too large ({len(raw)} > {limits.max_body_bytes} bytes)")
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"malformed JSON: {e}")
    return validate(payload, limits, defaults)


def prompt_tokens(tokenizer, messages):
    """The chat format the model was fine-tuned on, ending in <|assistant_start|> (ordinary-text encoding)."""
    conversation = {"messages": messages + [{"role": "assistant", "content": ""}]}
    return tokenizer.render_for_completion(conversation)


def generate_in_thread(worker: Worker, req: dict, cancel: threading.Event, put):
    """Runs in a worker thread: streams ("token", text) ... then ("done", reason) or ("error", message)."""
    tok = worker.tokenizer
    try:
        tokens = prompt_tokens(tok, req["messages"])
        context = worker.engine.model.config.sequence_len
        if len(tokens) >= context:
            put(("error", f"conversation is {len(tokens)} tokens; the model's context is {context}"))
            return
        stops = {tok.encode_special("<|assistant_end|>"), tok.get_bos_token_id()}
        decoder = StreamDecoder(tok)
        reason = "length"
        max_tokens = min(req["max_tokens"], context - len(tokens))
        for column, _ in worker.engine.generate(tokens, num_samples=1, max_tokens=max_tokens,
                                                temperature=req["temperature"], top_k=req["top_k"] or None,
                                                seed=req["seed"]):
            if cancel.is_set():
                reason = "cancelled"
                break
            if column[0] in stops:
                reason = "stop"
                break
            text = decoder.push(column[0])
            if text:
                put(("token", text))
        rest = decoder.flush()
        if rest and reason != "cancelled":
            put(("token", rest))
        put(("done", reason))
    except Exception as e:      # report to the client; the worker stays usable
        put(("error", f"{type(e).__name__}: {e}"))


async def stream_chat(pool: WorkerPool, req: dict, cancel: threading.Event):
    """Async generator of events for one request: waits for a worker, runs it, always gives the worker back."""
    worker = await pool.acquire()
    loop = asyncio.get_running_loop()
    events = asyncio.Queue()
    put = lambda item: loop.call_soon_threadsafe(events.put_nowait, item)
    try:
        future = loop.run_in_executor(pool.executor, generate_in_thread, worker, req, cancel, put)
    except BaseException:
        pool.release(worker)
        raise
    # the worker goes back when the thread returns -- also if this generator is cancelled by a disconnect,
    # where no further `await` may run (so no `await future` in a finally block)
    future.add_done_callback(lambda _: pool.release(worker))
    try:
        yield ("start", worker.id)
        while True:
            kind, value = await events.get()
            yield (kind, value)
            if kind in ("done", "error"):
                break
    finally:
        cancel.set()


def create_app(workers, limits: Limits | None = None, defaults: Defaults | None = None, title="nanochat"):
    limits, defaults = limits or Limits(), defaults or Defaults()
    app = FastAPI(title=title)
    state = {}

    def pool() -> WorkerPool:
        # created lazily inside the server's event loop (asyncio.Queue belongs to a loop)
        if "pool" not in state:
            state["pool"] = WorkerPool(workers)
        return state["pool"]

    @app.get("/", response_class=HTMLResponse)
    async def index():
        with open(UI_PATH, encoding="utf-8") as f:
            return f.read()

    @app.get("/health")
    async def health():
        return {"status": "ok", "ready": True, **pool().status()}

    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        try:
            req = parse_body(await request.body(), limits, defaults)
        except RequestError as e:
            return JSONResponse({"error": e.detail}, status_code=e.status)
        cancel = threading.Event()

        async def sse():
            async for kind, value in stream_chat(pool(), req, cancel):
                if kind == "start":
                    continue
                if kind == "token":
                    yield f"data: {json.dumps({'token': value})}\n\n"
                elif kind == "done":
                    yield f"data: {json.dumps({'done': True, 'finish_reason': value})}\n\n"
                else:
                    yield f"data: {json.dumps({'error': value})}\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.websocket("/ws")
    async def ws_chat(websocket: WebSocket):
        """Send {"messages": [...], ...}; receive {"type": "token"} ... {"type": "done"}. {"type": "stop"} stops."""
        await websocket.accept()
        inbox = asyncio.Queue()
        current = {"cancel": None}

        async def listen():
            try:
                while True:
                    text = await websocket.receive_text()
                    try:
                        msg = json.loads(text)
                    except json.JSONDecodeError:
                        msg = None
                    if isinstance(msg, dict) and msg.get("type") == "stop":
                        if current["cancel"] is not None:
                            current["cancel"].set()
                        continue
                    await inbox.put(text)
            except (WebSocketDisconnect, RuntimeError):
                if current["cancel"] is not None:
                    current["cancel"].set()
                await inbox.put(None)

        listener = asyncio.create_task(listen())
        try:
            while True:
                text = await inbox.get()
                if text is None:
                    break
                try:
                    if len(text.encode("utf-8")) > limits.max_body_bytes:
                        raise RequestError(413, f"message too large (> {limits.max_body_bytes} bytes)")
                    req = parse_body(text.encode("utf-8"), limits, defaults)
                except RequestError as e:
                    await websocket.send_json({"type": "error", "status": e.status, "detail": e.detail})
                    continue
                cancel = current["cancel"] = threading.Event()
                async for kind, value in stream_chat(pool(), req, cancel):
                    if kind == "start":
                        await websocket.send_json({"type": "start", "worker": value})
                    elif kind == "token":
                        await websocket.send_json({"type": "token", "token": value})
                    elif kind == "done":
                        await websocket.send_json({"type": "done", "finish_reason": value})
                    else:
                        await websocket.send_json({"type": "error", "status": 500, "detail": value})
                current["cancel"] = None
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if current["cancel"] is not None:
                current["cancel"].set()
            listener.cancel()

    return app


# ----------------------------------------------------------------------------------------------------------------
# Running it

class ServerThread:
    """A real uvicorn server on a loopback port, in a background thread (tests and the book's chapter use it)."""

    def __init__(self, app, host="127.0.0.1", port=8000, log_level="warning"):
        import uvicorn
        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                    ws="auto", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def start(self, timeout=20.0):
        import time
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def load_workers(source, device_type, num_workers=None, model_tag=None, step=None, fast=None):
    """One worker per GPU (or num_workers replicas on CPU/MPS), each with its own copy of the model."""
    from nanochat.checkpoint_manager import load_model
    if device_type == "cuda":
        devices = [f"cuda:{i}" for i in range(num_workers or torch.cuda.device_count())]
    else:
        devices = [device_type] * (num_workers or 1)
    workers = []
    for i, device in enumerate(devices):
        model, tokenizer, _ = load_model(source, device, phase="eval", model_tag=model_tag, step=step)
        workers.append(Worker(i, Engine(model, tokenizer, fast=fast), tokenizer, device))
    return workers


def main(argv=None):
    from nanochat.common import autodetect_device_type
    ap = argparse.ArgumentParser(description="Serve a nanochat model: web UI, WebSocket and SSE streaming")
    ap.add_argument("-i", "--source", default="sft", help="base | mid | sft | rl")
    ap.add_argument("-g", "--model-tag", default=None)
    ap.add_argument("-s", "--step", type=int, default=None)
    ap.add_argument("-p", "--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve beyond this machine")
    ap.add_argument("-t", "--temperature", type=float, default=0.8)
    ap.add_argument("-k", "--top-k", type=int, default=50)
    ap.add_argument("-m", "--max-tokens", type=int, default=512)
    ap.add_argument("-n", "--num-workers", type=int, default=None, help="default: one per GPU, else 1")
    ap.add_argument("--device-type", default=None, help="cuda | cpu | mps (default: autodetect)")
    args = ap.parse_args(argv)
    device_type = args.device_type or autodetect_device_type()
    workers = load_workers(args.source, device_type, args.num_workers, args.model_tag, args.step)
    c = workers[0].engine.model.config
    print(f"serving {args.source} model (depth {c.n_layer}, context {c.sequence_len}) with {len(workers)} "
          f"worker(s) on {', '.join(w.device for w in workers)} at http://{args.host}:{args.port}", flush=True)
    app = create_app(workers, defaults=Defaults(args.temperature, args.top_k, args.max_tokens))
    import uvicorn
    uvicorn.run(app, host=args.host, port=args.port, ws="auto", log_level="info")


if __name__ == "__main__":
    main()
