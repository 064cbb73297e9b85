"""A harness to reproduce and extend the degradation study of He et al. (arXiv 1512.03385,
1603.05027): plain and residual nets, trained by a Hydra sweep, tracked in MLflow, drawn as
the paper's figures."""
