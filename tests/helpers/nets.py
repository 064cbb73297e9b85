"""Looking inside a net: its size, and BatchNorm layers that cannot pass for the identity."""

import torch


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial running statistics and affine parameters, then switch to eval
    mode, so that a BN cannot pass for the identity in a hand-computed forward."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model.eval()


def layers_in_execution_order(model: torch.nn.Module, x: torch.Tensor) -> list[torch.nn.Module]:
    """The convs, BNs and linear layers of `model` in the order a forward pass runs them."""
    order = []
    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return order


def assert_same_logits(ours: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor) -> None:
    """`reference` given `ours`'s weights, layer by layer in execution order, computes the same logits."""
    pairs = zip(layers_in_execution_order(ours, x), layers_in_execution_order(reference, x), strict=True)
    for mine, theirs in pairs:
        assert type(mine) is type(theirs)
        theirs.load_state_dict(mine.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reference(x), ours(x), atol=1e-5, rtol=1e-5)
