"""Glue for one-shot generation from the CLI: load, build the prompt, generate."""

from __future__ import annotations

from typing import Callable

from labs.config import Settings
from labs.engine.defaults import sampling_params_from_settings
from labs.engine.sequential import GenerationResult, SequentialGenerator
from labs.models import LoadedModel, load_model
from labs.models.prompting import parse_messages_json, prompt_token_ids


def generate_for_cli(
    settings: Settings,
    prompt: str | None,
    messages_json: str | None,
    on_text: Callable[[str], None] | None,
    progress: Callable[[str], None],
) -> tuple[GenerationResult, LoadedModel]:
    messages = parse_messages_json(messages_json) if messages_json is not None else None
    params = sampling_params_from_settings(settings.generation)  # validate before the slow load
    loaded = load_model(settings, progress=progress)
    generation = settings.generation
    ids = prompt_token_ids(
        loaded.tokenizer,
        prompt=prompt,
        messages=messages,
        system=generation.system_prompt,
        use_chat_template=generation.use_chat_template,
        add_generation_prompt=generation.add_generation_prompt,
    )
    progress(f"Generating with {loaded.describe()}")
    generator = SequentialGenerator(loaded.model, loaded.tokenizer, loaded.context_length)
    return generator.generate(ids, params, on_text), loaded
