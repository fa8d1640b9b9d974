"""What the minimum a rule reaches looks like: sharpness, curvature, ablation.

* ``sharpness``: Keskar et al.'s (2017) epsilon-sharpness, the Hessian's top eigenvalue
  by power iteration, and Dinh et al.'s (2017) rescaling, which changes both without
  changing the function the network computes;
* ``ablation``: accuracy as hidden units are zeroed in random orders, and the area under
  that curve (Morcos et al., 2018);
* ``minimum``: a rule trained on a task and its network measured (generalisation gap,
  sharpness, eigenvalue, ablation area).
"""

from nos.analysis.ablation import AblationCurve, ablation_curve
from nos.analysis.minimum import Measured, MeasureSettings, Minimum, measure, train_and_measure
from nos.analysis.sharpness import epsilon_sharpness, rescale_relu_pair, top_eigenvalue

__all__ = ["AblationCurve", "MeasureSettings", "Measured", "Minimum", "ablation_curve",
           "epsilon_sharpness", "measure", "rescale_relu_pair", "top_eigenvalue",
           "train_and_measure"]
