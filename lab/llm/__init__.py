"""LLM work on the platform: prompts as code, providers, evaluation suites, retrieval,
token budgets, rate limits, spend ceilings and caches.

The same registry, ledger, pipeline, flags and monitoring that serve tabular models serve
LLM applications: a prompt is a registered model of flavor ``prompt`` (aliases, history,
rollback), a provider or an embedder is a plugin (``lab_llm_providers``,
``lab_embedders``), an evaluation suite is a pipeline stage. The shared value types are in
``lab.llm.types``; ``[tool.lab.llm]`` configures it all (``lab.llm.settings``).
"""
