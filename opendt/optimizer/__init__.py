"""The SLO-driven optimizer's building blocks (issue 7), each importable on its own:

* :mod:`~opendt.optimizer.slo`: the SLO model, its file, and the watcher that applies edits at run time;
* :mod:`~opendt.optimizer.scoring`: window outcomes scored against the SLOs (pure);
* :mod:`~opendt.models.patch`: dotted topology patches (also the what-if API's) and topology diffs;
* :mod:`~opendt.optimizer.rules`: the strategy context, proposals, bounds and the rule-based strategy;
* :mod:`~opendt.optimizer.llm`: the LLM strategy (OpenAI-compatible client) with the rules as fallback.
"""
