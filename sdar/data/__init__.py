"""From trajectories to learner batches (token-level views for the student and the privileged teacher)."""

from sdar.data.tokenize import (TeacherPrompts, TemplateNotPrefixStableError, build_teacher_prompts, conversation_rows,
                                teacher_prompts, turn_rows)

__all__ = ["TeacherPrompts", "TemplateNotPrefixStableError", "build_teacher_prompts", "conversation_rows",
           "teacher_prompts", "turn_rows"]
