"""Forward hooks that record per-block features of a C-GSPN vision tower (teachers and students alike).

For each tapped block ``i`` the record holds:

- ``"input"``: the block's input ``h[i-1]`` (B, N, C);
- ``"mixer"``: the token-mixer sublayer output, ``Attn_i(LN1(h))`` or ``Prop_i(LN1(h))``;
- ``"pp"``: the residual stream right after the mixer, ``input + mixer`` (SPEC §4 tap PP);
- ``"pb"``: the block output (SPEC §4 tap PB).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class FeatureTaps:
    """Context manager recording block features of ``vision_model`` (anything with ``encoder.layers``).

    Example:

    ```python
    >>> with FeatureTaps(model.vision_model, layers=[8, 17, 26]) as taps:
    ...     model.vision_model(pixel_values)
    >>> taps.records[8]["pp"].shape
    ```
    """

    def __init__(self, vision_model: nn.Module, layers: Iterable[int] | None = None, detach: bool = False):
        self.blocks = vision_model.encoder.layers
        indices = range(len(self.blocks)) if layers is None else layers
        self.layers = sorted(set(indices))
        bad = [index for index in self.layers if not 0 <= index < len(self.blocks)]
        if bad:
            raise ValueError(f"Tap indices {bad} out of range for a tower of {len(self.blocks)} blocks")
        self.detach = detach
        self.records: dict[int, dict[str, torch.Tensor]] = {}
        self._handles: list[RemovableHandle] = []

    def _store(self, index: int, key: str, value: torch.Tensor) -> None:
        self.records.setdefault(index, {})[key] = value.detach() if self.detach else value

    def _hooks_for(self, index: int) -> list[RemovableHandle]:
        block = self.blocks[index]

        def record_input(module, args):
            self._store(index, "input", args[0])

        def record_mixer(module, args, output):
            mixed = output[0] if isinstance(output, tuple) else output
            self._store(index, "mixer", mixed)
            self._store(index, "pp", self.records[index]["input"] + mixed)

        def record_output(module, args, output):
            self._store(index, "pb", output[0] if isinstance(output, tuple) else output)

        return [
            block.register_forward_pre_hook(record_input),
            block.mixer.register_forward_hook(record_mixer),
            block.register_forward_hook(record_output),
        ]

    def __enter__(self) -> FeatureTaps:
        self.records.clear()
        for index in self.layers:
            self._handles.extend(self._hooks_for(index))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
