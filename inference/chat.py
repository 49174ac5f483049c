"""Prompts for the two kinds of model: harmony chat (SFT / released models) and raw text (base).

Chat prompts are rendered by data_prep.sft.render, the same code that rendered the SFT training
data, so that inference sees exactly the format training did; this module only adds the system and
developer messages harmony expects and the `<|start|>assistant` header the model continues from.
With no explicit system text the system message is openai_harmony's default (model identity,
knowledge cutoff, `Reasoning: <effort>`, valid channels; the tests compare the ids with
openai_harmony's renderer).

A completion is parsed back into harmony messages: the reasoning (analysis channel), tool calls
(commentary) and the answer (final channel).
"""

from __future__ import annotations

from dataclasses import dataclass

EFFORTS = ("low", "medium", "high")
DEFAULT_SYSTEM = (
    "You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n\n"
    "Reasoning: {effort}\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message."
)


def system_message(effort: str = "medium") -> str:
    if effort not in EFFORTS:
        raise ValueError(f"reasoning effort must be one of {', '.join(EFFORTS)}, got {effort!r}")
    return DEFAULT_SYSTEM.format(effort=effort)


def render_chat(
    messages: list[dict[str, str]] | str,
    *,
    reasoning_effort: str = "medium",
    system: str | None = None,
    developer: str | None = None,
) -> list[int]:
    """Token ids of a harmony conversation, ending with `<|start|>assistant` for the model to continue.

    `messages`: a user string, or [{"role": "user"|"assistant"|"system"|"developer", "content": ...}].
    A system message is added unless one is given (its text: `system`, or the default with
    `reasoning_effort`); `developer` adds a developer message with harmony's "# Instructions" heading.
    """
    from data_prep.sft import render
    from gptoss.tokenizer import SPECIAL, encoding

    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    flat: list[dict[str, str]] = []
    if not any(m.get("role") == "system" for m in messages):
        flat.append(
            {
                "role": "system",
                "channel": "",
                "content": system if system is not None else system_message(reasoning_effort),
            }
        )
    if developer is not None:
        flat.append({"role": "developer", "channel": "", "content": f"# Instructions\n\n{developer}"})
    for n, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "developer", "user", "assistant") or not isinstance(content, str):
            raise ValueError(f"message {n}: need role system/developer/user/assistant and string content, got {m!r}")
        flat.append(
            {"role": role, "channel": m.get("channel") or ("final" if role == "assistant" else ""), "content": content}
        )
    # render() closes the *last* message with <|return|> (the end of a training example); a prompt
    # needs every message closed with <|end|>, so render one dummy turn more and cut it off.
    ids, _ = render([*flat, {"role": "assistant", "channel": "final", "content": ""}])
    cut = len(ids) - 1 - ids[::-1].index(SPECIAL["<|start|>"])
    return ids[:cut] + [SPECIAL["<|start|>"], *encoding().encode_ordinary("assistant")]


def chat_stop_ids() -> tuple[int, ...]:
    """Where an assistant turn ends: <|return|> (final answer done) or <|call|> (tool call)."""
    from gptoss.tokenizer import SPECIAL

    return (SPECIAL["<|return|>"], SPECIAL["<|call|>"])


def raw_stop_ids() -> tuple[int, ...]:
    from gptoss.tokenizer import SPECIAL

    return (SPECIAL["<|endoftext|>"], SPECIAL["<|return|>"])


@dataclass
class Message:
    channel: str
    content: str


def parse_completion(ids: list[int]) -> list[Message]:
    """The assistant messages in a completion that followed `<|start|>assistant`.

    Tolerant of what an undertrained model writes: a message without a channel header is taken
    as "final", and a completion cut off by max tokens keeps its last, unfinished message.
    """
    from gptoss.tokenizer import SPECIAL, encoding

    enc = encoding()
    start, end, msg, chan = SPECIAL["<|start|>"], SPECIAL["<|end|>"], SPECIAL["<|message|>"], SPECIAL["<|channel|>"]
    stops = {end, SPECIAL["<|return|>"], SPECIAL["<|call|>"]}
    out: list[Message] = []
    i = 0
    while i < len(ids):
        if ids[i] == start:  # "<|start|>assistant" header of a following message
            i += 1
            while i < len(ids) and ids[i] not in (chan, msg):
                i += 1
        channel = "final"
        if i < len(ids) and ids[i] == chan:
            j = i + 1
            while j < len(ids) and ids[j] != msg:
                j += 1
            channel = enc.decode(ids[i + 1 : j]).strip().split(" ")[0] or "final"
            i = j
        if i < len(ids) and ids[i] == msg:
            i += 1
        j = i
        while j < len(ids) and ids[j] not in stops and ids[j] != start:
            j += 1
        out.append(Message(channel, enc.decode(ids[i:j])))
        i = j + 1 if j < len(ids) and ids[j] in stops else j
    return out


def final_text(ids: list[int]) -> str:
    """The answer: the last final-channel message (empty when the model never got there)."""
    finals = [m.content for m in parse_completion(ids) if m.channel == "final"]
    return finals[-1] if finals else ""
