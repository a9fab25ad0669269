"""Locust load test for Ouro's OpenAI-compatible API: chat (streaming and not) and corrections.

    locust -f loadtests/locustfile.py --headless -u 16 -r 4 -t 60s --host http://127.0.0.1:8000

``--host`` is any Ouro deployment (a laptop or a cluster's ingress, path prefix allowed).
Scenarios are tasks of one user class, selected with Locust's tags:

- ``stream``: a streamed chat completion (SSE); reports TTFT, ITL and tokens/s;
- ``chat``: a plain chat completion; reports tokens/s;
- ``feedback``: asks a question, then posts the dataset's answer as a correction to
  ``/v1/feedback`` (the records carry ``reason="locust load test"``; point this scenario at
  a server whose ledger may receive them).

e.g. ``--tags stream chat`` leaves corrections out. Prompts are real conversations cut
at a random user turn, so conversation lengths follow the data: the English
chatterbot-corpus by default, or a chat JSONL (``{"messages": [...]}`` per line, what
``python -m data build`` writes) named by ``--ouro-data`` / ``OURO_LOADTEST_DATA``.

Custom rows in Locust's statistics and CSV (the "Type" column):

- ``TTFT``: time from sending a streamed request to its first content token, in ms;
- ``ITL``: time between two consecutive streamed content chunks, in ms (one sample per gap,
  so its percentiles show stalls);
- ``TPS``: completion tokens per second of one whole request (sending to last byte). Its
  "response time" columns hold tokens/s, not milliseconds.

The streamed POST row itself is timed to the end of the stream, not to the headers.
Options (each also an environment variable): ``--ouro-api-key`` / ``OURO_API_KEY``,
``--ouro-model`` / ``OURO_LOADTEST_MODEL`` (default ``ouro``), ``--ouro-max-tokens`` /
``OURO_LOADTEST_MAX_TOKENS``, ``--ouro-temperature`` / ``OURO_LOADTEST_TEMPERATURE``.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from locust import HttpUser, between, events, tag, task

from ouro.corpus import load_chatterbot_conversations
from ouro.errors import OuroError

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
FEEDBACK_PATH = "/v1/feedback"
FEEDBACK_REASON = "locust load test"
ROLES = {"system", "user", "assistant"}


class LoadTestDataError(OuroError):
    """The conversation data given to the load test cannot be used."""


@events.init_command_line_parser.add_listener
def add_ouro_options(parser: Any) -> None:
    parser.add_argument(
        "--ouro-api-key",
        env_var="OURO_API_KEY",
        default="",
        is_secret=True,
        help="API key sent as 'Authorization: Bearer' (none when empty).",
    )
    parser.add_argument(
        "--ouro-model",
        env_var="OURO_LOADTEST_MODEL",
        default="ouro",
        help="Model name to ask for: ouro, ouro@<alias>, ouro@v<N> or ouro-base.",
    )
    parser.add_argument(
        "--ouro-data",
        env_var="OURO_LOADTEST_DATA",
        default="",
        help="Chat JSONL ({'messages': [...]} per line); default: the chatterbot corpus.",
    )
    parser.add_argument(
        "--ouro-max-tokens",
        env_var="OURO_LOADTEST_MAX_TOKENS",
        type=int,
        default=64,
        help="max_tokens of every chat request.",
    )
    parser.add_argument(
        "--ouro-temperature",
        env_var="OURO_LOADTEST_TEMPERATURE",
        type=float,
        default=0.7,
        help="Sampling temperature of every chat request.",
    )


@dataclass(frozen=True)
class LoadTestConfig:
    """What every simulated user sends; read from Locust's parsed options."""

    api_key: str = field(default="", metadata={"help": "Bearer key; empty sends none."})
    model: str = field(default="ouro", metadata={"help": "Model name requested."})
    data: str = field(default="", metadata={"help": "Chat JSONL path; empty = chatterbot."})
    max_tokens: int = field(default=64, metadata={"help": "max_tokens per request."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})

    @classmethod
    def from_options(cls, options: Any) -> LoadTestConfig:
        if options is None:  # an Environment built in code, without a command line
            return cls()
        return cls(
            api_key=options.ouro_api_key,
            model=options.ouro_model,
            data=options.ouro_data,
            max_tokens=options.ouro_max_tokens,
            temperature=options.ouro_temperature,
        )

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class Prompt:
    """A conversation cut at a user turn, and the answer the data gives to it."""

    messages: list[dict] = field(metadata={"help": "Messages ending with a user turn."})
    reference: str | None = field(metadata={"help": "The data's next assistant turn, if any."})


def read_chat_jsonl(path: Path) -> list[list[dict]]:
    """Conversations from a chat JSONL file; any unusable line is a LoadTestDataError."""
    conversations = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise LoadTestDataError(f"cannot read load-test data {path}: {error}") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise LoadTestDataError(f"{path}:{number}: not JSON ({error})") from error
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise LoadTestDataError(
                f'{path}:{number}: expected {{"messages": [{{"role", "content"}}, ...]}}'
            )
        conversations.append(messages)
    return conversations


class PromptSampler:
    """Draws prompts so that conversation lengths follow the data."""

    def __init__(self, conversations: list[list[dict]], rng: random.Random | None = None):
        # Every user turn is a place to cut: (conversation, index of that user turn).
        self.cuts = [
            (conversation, index)
            for conversation in conversations
            for index, message in enumerate(conversation)
            if message["role"] == "user" and message["content"].strip()
        ]
        if not self.cuts:
            raise LoadTestDataError("the load-test data holds no user turn to ask")
        self.answered = [
            cut
            for cut in self.cuts
            if cut[1] + 1 < len(cut[0]) and cut[0][cut[1] + 1]["role"] == "assistant"
        ]
        self.rng = rng or random.Random()

    def sample(self, *, with_reference: bool = False) -> Prompt:
        pool = self.answered if with_reference and self.answered else self.cuts
        conversation, index = self.rng.choice(pool)
        following = conversation[index + 1] if index + 1 < len(conversation) else None
        reference = following["content"] if following and following["role"] == "assistant" else None
        return Prompt(messages=conversation[: index + 1], reference=reference)


@functools.cache
def load_conversations(data: str) -> tuple[tuple[dict, ...], ...]:
    """The conversations of one data source, read once per process."""
    conversations = read_chat_jsonl(Path(data)) if data else load_chatterbot_conversations()
    logger.info("load test: %s conversations from %s", len(conversations), data or "chatterbot")
    return tuple(tuple(conversation) for conversation in conversations)


@events.init.add_listener
def check_data(environment: Any, **_kwargs: Any) -> None:
    # Bad data fails at start-up with a clear message, not once per simulated user.
    config = LoadTestConfig.from_options(environment.parsed_options)
    PromptSampler([list(c) for c in load_conversations(config.data)])


def server_sent_events(response: requests.Response) -> Iterator[str]:
    """The data of each server-sent event of a streamed response."""
    data: list[str] = []
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


def error_message(response: requests.Response) -> str:
    """A short failure text from OpenAI's error envelope (or whatever the body is)."""
    if getattr(response, "error", None) is not None:  # no answer at all (connection error)
        return repr(response.error)
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error.get('type')}: {error.get('message')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{response.status_code}: {response.text[:200]}"


@dataclass
class Answer:
    """What the server said: text, completion id and the exact version that answered."""

    text: str
    completion_id: str | None
    model: str | None


class OuroChatUser(HttpUser):
    """A person chatting with Ouro, now and then correcting an answer."""

    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.config = LoadTestConfig.from_options(self.environment.parsed_options)
        self.prompts = PromptSampler([list(c) for c in load_conversations(self.config.data)])

    def chat_body(self, messages: list[dict], *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            "stream": stream,
        }
        if stream:
            # A last chunk with the token usage, so tokens/s counts tokens, not chunks.
            body["stream_options"] = {"include_usage": True}
        return body

    def report_tokens_per_second(self, name: str, tokens: int, seconds: float) -> None:
        if tokens > 0 and seconds > 0:
            self.environment.events.request.fire(
                request_type="TPS",
                name=name,
                response_time=tokens / seconds,
                response_length=tokens,
                exception=None,
                context={},
            )

    def report_timing(self, request_type: str, name: str, milliseconds: float) -> None:
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=milliseconds,
            response_length=0,
            exception=None,
            context={},
        )

    @tag("stream")
    @task(3)
    def streamed_chat(self) -> None:
        prompt = self.prompts.sample()
        name = f"{CHAT_PATH} (stream)"
        started = time.perf_counter()
        with self.client.post(
            CHAT_PATH,
            json=self.chat_body(prompt.messages, stream=True),
            headers={**self.config.headers(), "Accept": "text/event-stream"},
            name=name,
            stream=True,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(error_message(response))
                return
            chunks, usage_tokens, received = 0, None, 0
            last_token = None
            try:
                for data in server_sent_events(response):
                    received += len(data)
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        response.failure(f"error in stream: {chunk['error'].get('message')}")
                        return
                    if chunk.get("usage"):
                        usage_tokens = chunk["usage"].get("completion_tokens")
                    if not any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                        continue
                    now = time.perf_counter()
                    if last_token is None:
                        self.report_timing("TTFT", CHAT_PATH, (now - started) * 1000)
                    else:
                        self.report_timing("ITL", CHAT_PATH, (now - last_token) * 1000)
                    last_token = now
                    chunks += 1
                else:
                    response.failure("stream ended without data: [DONE]")
                    return
            except (requests.RequestException, json.JSONDecodeError) as error:
                response.failure(f"broken stream: {error!r}")
                return
            elapsed = time.perf_counter() - started
            # The POST row is timed to the end of the stream, not to the response headers.
            response.request_meta["response_time"] = elapsed * 1000
            response.request_meta["response_length"] = received
            self.report_tokens_per_second(name, usage_tokens or chunks, elapsed)
            response.success()

    def complete(self, messages: list[dict]) -> Answer | None:
        """One plain chat completion; None (and a failure in the stats) when it fails."""
        started = time.perf_counter()
        with self.client.post(
            CHAT_PATH,
            json=self.chat_body(messages, stream=False),
            headers=self.config.headers(),
            name=CHAT_PATH,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(error_message(response))
                return None
            try:
                body = response.json()
                text = body["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError) as error:
                response.failure(f"not a chat completion: {error!r}")
                return None
            tokens = (body.get("usage") or {}).get("completion_tokens") or 0
            self.report_tokens_per_second(CHAT_PATH, tokens, time.perf_counter() - started)
            response.success()
            return Answer(text=text, completion_id=body.get("id"), model=body.get("model"))

    @tag("chat")
    @task(2)
    def chat(self) -> None:
        self.complete(self.prompts.sample().messages)

    @tag("feedback")
    @task(1)
    def correct_an_answer(self) -> None:
        prompt = self.prompts.sample(with_reference=True)
        answer = self.complete(prompt.messages)
        if answer is None or not prompt.reference:
            return
        if prompt.reference.strip() == answer.text.strip():
            return  # the model got it right: nothing to correct
        body = {
            "messages": prompt.messages,
            "completion": answer.text,
            "correction": prompt.reference,
            "model": answer.model or self.config.model,
            "reason": FEEDBACK_REASON,
        }
        if answer.completion_id:
            body["completion_id"] = answer.completion_id
        with self.client.post(
            FEEDBACK_PATH,
            json=body,
            headers=self.config.headers(),
            name=FEEDBACK_PATH,
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(error_message(response))
                return
            try:
                record_id = response.json()["id"]
            except (ValueError, KeyError, TypeError) as error:
                response.failure(f"feedback answer has no id: {error!r}")
                return
            logger.debug("correction saved as %s", record_id)
            response.success()
