"""Learned optimizers: a coordinate-wise LSTM meta-trained on a child task (Andrychowicz et al., 2016)."""
