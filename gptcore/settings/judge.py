"""params.yaml `judge`: the LLM that scores the instruction model's test responses over HTTP, as the book's
chapter 7 asks Llama 3 through Ollama (gptcore.evaluation.judge); off by default."""

from dataclasses import dataclass

from ..errors import ConfigError
from . import check_fields, setting

JUDGE_APIS = ("ollama", "openai")
# the book's generate_model_scores prompt; {prompt} is the entry formatted with the template
JUDGE_PROMPT = ("Given the input `{prompt}` and correct output `{output}`, score the model response `{response}` on "
                "a scale from 0 to 100, where 100 is the best score. Respond with the integer number only.")


@dataclass(frozen=True)
class JudgeConfig:
    enabled: bool = setting(False, "score each test response with an LLM judge over HTTP (the book: Llama 3 "
                                   "through Ollama); off: the offline metrics only")
    api: str = setting("ollama", "ollama: POST /api/chat as the book | openai: POST /v1/chat/completions "
                                 "(Ollama, vLLM, llama.cpp's server)", choices=JUDGE_APIS)
    url: str = setting("http://localhost:11434/api/chat", "the judge's chat endpoint")
    model: str = setting("llama3", "the judge's model name")
    prompt: str = setting(JUDGE_PROMPT, "what the judge is asked per entry: {prompt}, {output} and {response} are "
                                        "filled in")
    seed: int = setting(123, "sampling seed sent to the judge (the book's options), with temperature 0", low=0)
    num_ctx: int = setting(2048, "the judge's context window (Ollama's num_ctx, as the book)", low=1)
    timeout_seconds: float = setting(120.0, "per request", low=0.0, low_open=True)

    def __post_init__(self):
        check_fields(self, "judge")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"judge.url = {self.url!r} is not an http(s) URL; give the judge's endpoint, e.g. "
                              "http://localhost:11434/api/chat")
        missing = [name for name in ("{prompt}", "{output}", "{response}") if name not in self.prompt]
        if missing:
            raise ConfigError(f"judge.prompt has no {', '.join(missing)}; the judge needs the entry, the reference "
                              "and the response")
