"""grad-cam 1.5.7's package path for Deep Feature Factorization."""
