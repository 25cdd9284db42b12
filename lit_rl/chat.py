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
    use = chat_template is True or (chat_template == "auto" and (isinstance(prompt, list) or has_template))
    if not use:
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
