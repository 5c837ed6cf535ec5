# Comparisons, benchmarks, custom test sets and LLM judging arrive with the evaluation issue.
