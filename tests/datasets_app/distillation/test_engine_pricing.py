from __future__ import annotations

import pytest

from datasets_app.distillation.engine.pricing import DEFAULT_PRICES, cost_usd, estimate_cost, price_for


def test_default_prices_cover_the_common_teachers() -> None:
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4-turbo", "gpt-3.5-turbo",
                  "o3-mini", "claude-3-5-haiku", "claude-3-5-sonnet", "claude-3-opus", "claude-sonnet-4",
                  "claude-opus-4", "claude-haiku-4-5"):
        price_in, price_out = DEFAULT_PRICES[model]
        assert 0 < price_in <= price_out, model


@pytest.mark.parametrize(("model", "key"), [
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("GPT-4o-Mini", "gpt-4o-mini"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longest prefix, not "gpt-4o"
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
    ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
    ("o3-mini-2025-01-31", "o3-mini"),
    ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
    ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-opus-4-1-20250805", "claude-opus-4-1"),
    ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
])
def test_dated_and_tagged_model_names_find_their_price(model: str, key: str) -> None:
    assert price_for(model, DEFAULT_PRICES) == DEFAULT_PRICES[key]


@pytest.mark.parametrize("model", ["llama-3-8b-instruct", "gpt-4.5-preview", "gpt-4oops", "claude", ""])
def test_unknown_models_have_no_price(model: str) -> None:
    # "gpt-4.5-preview" must not fall back to "gpt-4": a wrong price is worse than none
    assert price_for(model, DEFAULT_PRICES) is None


def test_the_operators_own_table_is_used() -> None:
    prices = {"My-Model": (1.0, 2.0), "my-model-large": (3.0, 6.0)}
    assert price_for("my-model-v2", prices) == (1.0, 2.0)
    assert price_for("my-model-large-q4", prices) == (3.0, 6.0)
    assert price_for("gpt-4o", prices) is None


def test_cost_is_tokens_times_price_per_million() -> None:
    assert cost_usd(1_000_000, 500_000, (2.5, 10.0)) == pytest.approx(7.5)
    assert cost_usd(1200, 300, (0.15, 0.60)) == pytest.approx((1200 * 0.15 + 300 * 0.60) / 1e6)
    assert cost_usd(0, 0, (30.0, 60.0)) == 0


def test_estimate_bounds_prompts_alone_to_every_answer_at_max_tokens() -> None:
    estimate = estimate_cost(num_requests=1000, prompt_tokens_avg=200, max_tokens=500, price=(0.15, 0.60))
    assert estimate["low"] == pytest.approx(0.03)  # 200k input tokens
    assert estimate["expected"] == pytest.approx(0.03 + 0.15)  # + 250k output tokens
    assert estimate["high"] == pytest.approx(0.03 + 0.30)  # + 500k output tokens
    assert (estimate["tokens_in"], estimate["tokens_out_max"]) == (200_000, 500_000)


def test_expected_output_fraction_moves_the_expected_cost_between_the_bounds() -> None:
    args = {"num_requests": 10, "prompt_tokens_avg": 50.5, "max_tokens": 100, "price": (1.0, 4.0)}
    none, full = estimate_cost(**args, expected_output_fraction=0.0), estimate_cost(**args, expected_output_fraction=1)
    assert none["expected"] == none["low"] and full["expected"] == full["high"]
    assert none["low"] < estimate_cost(**args)["expected"] < full["high"]
    assert estimate_cost(num_requests=0, prompt_tokens_avg=0, max_tokens=0, price=(1.0, 4.0))["high"] == 0


@pytest.mark.parametrize("bad", [{"expected_output_fraction": 1.5}, {"expected_output_fraction": -0.1},
                                 {"num_requests": -1}, {"max_tokens": -5}])
def test_estimate_refuses_impossible_inputs(bad: dict[str, float]) -> None:
    args = {"num_requests": 10, "prompt_tokens_avg": 50, "max_tokens": 100, "price": (1.0, 4.0), **bad}
    with pytest.raises(ValueError):
        estimate_cost(**args)  # type: ignore[arg-type]
