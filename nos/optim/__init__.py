"""The torch side: :class:`~nos.optim.optimizer.Optimizer`, the named rules, and the
learning-rate schedules."""
