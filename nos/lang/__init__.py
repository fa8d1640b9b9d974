"""The language: rule text becomes a :class:`~nos.lang.rule.Rule` (the grammar, the tree,
the parser, the printer, and the table of operations every executor reads)."""
