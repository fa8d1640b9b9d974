"""What the minimum a rule reaches looks like: sharpness, curvature, ablation (Keskar et al., 2017; Dinh et al., 2017; Morcos et al., 2018)."""
