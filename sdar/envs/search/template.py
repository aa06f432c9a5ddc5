"""The per-turn prompt wording for Search-QA (``SEARCH_TEMPLATE``, the template of ``sdar.envs.search.spec``).

It carries the Search-R1 action instructions: reason inside ``<think>``, then either search with
``<search> query </search>`` or answer with ``<answer> answer </answer>``, never both. There is no admissible-action
list. The first turn shows only the question; later turns show the recent turns and the latest search result.
"""

from __future__ import annotations

from sdar.prompts.render import PromptTemplate

__all__ = ["SEARCH_INSTRUCTION", "SEARCH_TEMPLATE"]

SEARCH_INSTRUCTION = (
    "Begin by reasoning about what you already know and what is still missing; this reasoning MUST be inside "
    "<think> </think> tags. Then take exactly one of these two actions, never both:\n"
    "(1) If some knowledge is missing, query the search engine with <search> your query </search>; the results "
    "will come back between <information> and </information>.\n"
    "(2) If you can answer with confidence, give only the final short answer inside <answer> </answer>, with no "
    "explanation, for example <answer>Beijing</answer>."
)
"""The answer-format instruction (Search-R1's two actions, in this project's words)."""

SEARCH_TEMPLATE = PromptTemplate(
    preamble="You are an expert agent answering a question step by step, with a search engine at hand.",
    task="Your question: {goal}",
    first_step="This is your first step; you have not searched yet.",
    progress="You have already taken {step} step(s).",
    history_intro=(
        "Here are your {count} most recent step(s): what you were shown, then your action. Your past queries are "
        "inside <search> </search> and the search engine's results inside <information> </information>."
    ),
    history_item="Step {index} input: {observation}\nStep {index} action: {action}",
    current="This is step {current_step}. Latest result: {observation}",
    admissible="Actions you can take now: [{actions}]",
    instruction=SEARCH_INSTRUCTION,
    instruction_free=SEARCH_INSTRUCTION,
)
"""Search-QA per-turn prompt (rendered by ``sdar.prompts.render.render_user_message``)."""
