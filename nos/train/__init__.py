"""A rule trains a child network on a task and earns a reward: the tasks, the evaluation
with its settings, and the learning-rate grid."""
