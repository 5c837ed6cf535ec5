"""What a teacher's tokens cost, and what a distillation job is likely to cost before it runs. Django-free."""
from __future__ import annotations

Price = tuple[float, float]  # USD per 1M input tokens, USD per 1M output tokens

# Starting values only, from the providers' public list prices as of 2026 (standard tier, no batch or
# cache discounts). Prices change: the operator edits them in the app, and the app passes its own table
# to the functions below; nothing here is read at call time except as that table's seed.
DEFAULT_PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    # Anthropic
    "claude-3-haiku": (0.25, 1.25),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-opus": (15.00, 75.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
    "claude-opus-4-1": (15.00, 75.00),
    "claude-opus-4-5": (5.00, 25.00),
    "claude-haiku-4-5": (1.00, 5.00),
}

# Where a dated or tagged variant's suffix may start: "gpt-4o-mini-2024-07-18", "claude-3-5-sonnet-latest",
# "llama3:8b". Not ".", so "gpt-4.1-foo" is not priced as "gpt-4".
_SUFFIX_STARTS = ("-", ":", "@", "_")


def price_for(model: str, prices: dict[str, Price]) -> Price | None:
    """The price of `model`: its exact entry, else the longest entry the name starts with (at a
    separator), else None. "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini", never as "gpt-4o"."""
    name = model.strip().lower()
    table = {key.strip().lower(): value for key, value in prices.items()}
    if name in table:
        return table[name]
    best: str | None = None
    for key in table:
        if name.startswith(key) and name[len(key)] in _SUFFIX_STARTS and (best is None or len(key) > len(best)):
            best = key
    return table[best] if best is not None else None


def cost_usd(tokens_in: float, tokens_out: float, price: Price) -> float:
    """USD for one call, or for totals (or averages, hence floats): tokens times the per-million prices."""
    price_in, price_out = price
    return (tokens_in * price_in + tokens_out * price_out) / 1_000_000


def estimate_cost(*, num_requests: int, prompt_tokens_avg: float, max_tokens: int, price: Price,
                  expected_output_fraction: float = 0.5) -> dict[str, float]:
    """Bounds on a job's cost in USD, before it runs.

    Every request pays its prompt: input = num_requests * prompt_tokens_avg. Answers are what is unknown:
      low      = cost(input, 0)                                        the prompts alone (answers near empty)
      expected = cost(input, num_requests * max_tokens * fraction)     answers use `fraction` of max_tokens
      high     = cost(input, num_requests * max_tokens)                every answer runs to max_tokens
    Retries of failed calls are not counted: 429s and 5xx are not billed, and a timed-out call that was
    billed is rare enough to leave to the live cost counter.
    """
    if num_requests < 0 or prompt_tokens_avg < 0 or max_tokens < 0:
        raise ValueError("num_requests, prompt_tokens_avg and max_tokens must not be negative")
    if not 0.0 <= expected_output_fraction <= 1.0:
        raise ValueError("expected_output_fraction must be between 0 and 1")
    tokens_in = num_requests * prompt_tokens_avg
    tokens_out_max = num_requests * max_tokens
    return {
        "low": cost_usd(tokens_in, 0, price),
        "expected": cost_usd(tokens_in, tokens_out_max * expected_output_fraction, price),
        "high": cost_usd(tokens_in, tokens_out_max, price),
        "tokens_in": tokens_in,
        "tokens_out_max": float(tokens_out_max),
    }
