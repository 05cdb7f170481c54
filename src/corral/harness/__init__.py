"""What runs as the agent: the `command` harness now; a built-in LLM loop later."""

from corral.harness.command import RunFiles, base_environment, build_launch
from corral.harness.prompt import PromptContext, build_prompt

__all__ = ["PromptContext", "RunFiles", "base_environment", "build_launch", "build_prompt"]
