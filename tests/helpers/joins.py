"""A join of your own: my_joins.py of docs/studies.md ("A variant of your own"), as the page writes
it (tests/test_docs_commands.py holds the two the same), outside harness/: shortcut=helpers.joins.REZERO."""

import torch
from torch import nn

from harness.models import Shortcut
from harness.models.resnet import Join


class ReZero(Join):
    """x + alpha F, alpha learnt from 0, so that every unit starts as its shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__(in_planes, out_planes, stride)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return shortcut + self.alpha * branch


REZERO = Shortcut("-rezero", ReZero)  # the name's suffix and the join: option A's path, no keys
