"""Prompts as the model sees them: plain text, or chat messages rendered with the tokenizer's chat template.

:func:`render_prompt` is the one place this happens: training, validation, ``lit-rl generate`` and offline
replay all call it, so a prompt is rendered the same way everywhere.
"""

from typing import Any, Literal

from lit_rl.rewards import Prompt
from lit_rl.rows import check_messages

ChatTemplate = bool | Literal["auto"]


def render_prompt(tokenizer: Any, prompt: Prompt, chat_template: ChatTemplate = "auto",
                  system_prompt: str | None = None, chat_template_kwargs: dict[str, Any] | None = None) -> str:
    """The text whose tokens the completion follows.

    ``chat_template``: ``auto`` uses the tokenizer's template when the prompt is a list of messages or the
    tokenizer has one (a plain-text prompt then becomes one user message); ``True`` always uses it; ``False``
    never (the prompt must be text). ``system_prompt`` becomes a leading system message unless the prompt has
    its own. The template's generation prompt is added (the assistant's turn starts), or, when the last message
    is the assistant's, that message is continued. ``chat_template_kwargs`` go to the template (e.g.
    ``enable_thinking``).
    """
    if isinstance(prompt, list):
        check_messages("prompt", "prompt", prompt)
    elif not isinstance(prompt, str):
        raise TypeError(f"a prompt must be text or a list of chat messages, got {type(prompt).__name__}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if not uses_template(tokenizer, prompt, chat_template):
        if isinstance(prompt, list):
            raise ValueError("the prompt is a list of chat messages but chat_template is false: set it to auto or "
                             "true, or give plain-text prompts")
        if system_prompt:
            raise ValueError("system_prompt needs a chat template, but chat_template is false")
        return prompt
    if not has_template:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}, {getattr(tokenizer, 'name_or_path', '')!r}) has "
                         f"no chat template, so chat messages (or chat_template: true, or a system_prompt) cannot be "
                         f"rendered; give plain-text prompts with chat_template: false, or a model with a template")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    continues = messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not continues,
                                         continue_final_message=continues, **(chat_template_kwargs or {}))


def uses_template(tokenizer: Any, prompt: Prompt, chat_template: ChatTemplate = "auto") -> bool:
    """Whether :func:`render_prompt` renders ``prompt`` with the tokenizer's chat template."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return chat_template is True or (chat_template == "auto" and (isinstance(prompt, list) or has_template))


PLACEHOLDER = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]


def observation_ids(tokenizer: Any, messages: list[dict[str, Any]], eos_ids: list[int],
                    chat_template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """The token ids a chat template adds after an assistant turn's text for ``messages`` (a user turn, tool
    results), up to and including the next assistant turn's header: the template renders a placeholder
    conversation with and without them, and the ids from the placeholder's end-of-turn token (its last EOS) on
    are the observation's, that token first; a template that ends no turn with an EOS gives the ids after the
    placeholder. The model's own tokens are never rendered again (TRL's and veRL's agent loops do the same)."""
    kwargs = chat_template_kwargs or {}
    prefix = tokenizer.apply_chat_template(PLACEHOLDER, tokenize=False, **kwargs)
    full = tokenizer.apply_chat_template(PLACEHOLDER + messages, tokenize=False, add_generation_prompt=True, **kwargs)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    ends = [i for i, t in enumerate(prefix_ids) if t in eos_ids]
    cut = ends[-1] if ends else len(prefix_ids)                         # a template with no end-of-turn token
    if full_ids[:cut] != prefix_ids[:cut]:
        raise ValueError("the chat template renders an observation by changing the conversation before it (the "
                         "placeholder turns render differently with it than without), so it cannot be appended as "
                         "tokens after the model's turn")
    return full_ids[cut:]
