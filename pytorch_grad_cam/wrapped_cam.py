"""The common shape of the methods that wrap an instance of a base method.

FinerCAM (it chooses the targets) and RefineCAM (it combines the layers) hand the layer
work to ``self.base``, a CAM object of the user's ``base_method``; they share its model,
its last output and its lifetime.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM


class WrappedCAM:
    """A method whose maps come from ``self.base``, an instance of its base method."""

    base: BaseCAM

    @property
    def model(self) -> nn.Module:
        """The explained model (the base method's)."""
        return self.base.model

    @property
    def outputs(self) -> Any:
        """The model's output of the last call."""
        return self.base.outputs

    def close(self) -> None:
        """Release the base method's last output; no hook outlives a call."""
        self.base.close()

    def __enter__(self) -> Any:
        """The CAM itself; leaving the block releases ``outputs``."""
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, exc_tb: Any) -> None:
        """Release; an exception is never swallowed (this returns None)."""
        self.close()


def check_base_method(base_method: Any) -> type[BaseCAM]:
    """``base_method`` if it is a CAM class, or a TypeError that says what to pass."""
    if not (isinstance(base_method, type) and issubclass(base_method, BaseCAM)):
        raise TypeError(
            f"base_method must be a CAM class (a BaseCAM subclass such as GradCAM), got "
            f"{base_method!r}; pass the class itself, not an instance."
        )
    return base_method
