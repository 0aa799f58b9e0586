"""Expert feed-forward blocks and the routing state they share.

A BERT layer's feed-forward block is ``intermediate.dense`` (hidden →
intermediate size), an activation, and ``output.dense`` (back to hidden),
followed by dropout and a residual LayerNorm. :class:`ExpertFeedForward`
replaces ``intermediate`` with N copies of that block (the experts) and
``output.dense`` becomes the identity, so dropout, the residual and the
LayerNorm stay shared and the copy computes exactly what the original did.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

ROUTER_MODE = -1


class Routing:
    """The routing decision shared by every expert layer of one model.

    ``expert`` is the enforced expert index for the whole batch, or
    ``ROUTER_MODE`` to let the router choose per input. In router mode the
    first expert layer classifies each input from its mean-pooled hidden
    state, using the attention mask captured at the start of the forward.
    Later expert layers reuse that choice, so an input goes to the same
    expert in every layer.
    """

    def __init__(self) -> None:
        self.expert = ROUTER_MODE
        self.attention_mask: Tensor | None = None
        self.row_experts: Tensor | None = None
        self.router_logits: Tensor | None = None
        self.router_inputs: Tensor | None = None

    def start_forward(self, attention_mask: Tensor | None) -> None:
        self.attention_mask = attention_mask
        self.row_experts = None
        self.router_logits = None
        self.router_inputs = None


class FeedForwardExpert(nn.Module):
    """One copy of a transformer layer's feed-forward block: up-projection, activation, down-projection."""

    def __init__(self, up: nn.Linear, down: nn.Linear, activation: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.up = up
        self.down = down
        self.activation = activation

    def forward(self, hidden: Tensor) -> Tensor:
        return self.down(self.activation(self.up(hidden)))


class ExpertFeedForward(nn.Module):
    """N feed-forward experts in place of a layer's ``intermediate`` module.

    With an enforced expert the whole batch runs through that expert, at the
    cost of one plain feed-forward block. In router mode each row runs
    through the expert its router decision names. ``router`` is set only on
    the model's first expert layer: a linear classifier over the masked mean
    of this layer's input, trained separately with cross-entropy against
    domain labels. Its input is detached, so training the router never
    changes the encoder.
    """

    def __init__(self, experts: list[FeedForwardExpert], routing: Routing, router: nn.Linear | None = None) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.router = router
        # A plain attribute, not a submodule, because every expert layer shares the same state object.
        self.__dict__["routing"] = routing

    @classmethod
    def from_layer(cls, layer: nn.Module, count: int, routing: Routing, with_router: bool) -> "ExpertFeedForward":
        """Copy ``layer.intermediate.dense`` and ``layer.output.dense`` into ``count`` experts."""
        intermediate, output = layer.intermediate, layer.output
        experts = []
        for _ in range(count):
            up = nn.Linear(intermediate.dense.in_features, intermediate.dense.out_features)
            down = nn.Linear(output.dense.in_features, output.dense.out_features)
            up.load_state_dict(intermediate.dense.state_dict())
            down.load_state_dict(output.dense.state_dict())
            experts.append(FeedForwardExpert(up, down, intermediate.intermediate_act_fn))
        hidden = intermediate.dense.in_features
        router = nn.Linear(hidden, count) if with_router else None
        if router is not None:
            nn.init.zeros_(router.weight)
            nn.init.zeros_(router.bias)
        return cls(experts, routing, router).to(intermediate.dense.weight.device, intermediate.dense.weight.dtype)

    def forward(self, hidden: Tensor) -> Tensor:
        routing = self.routing
        if routing.expert != ROUTER_MODE:
            return self.experts[routing.expert](hidden)
        if routing.row_experts is None:
            if self.router is None:
                raise RuntimeError("router mode reached an expert layer without a router decision; the first expert layer must contain the router")
            pooled = _masked_mean(hidden.detach(), routing.attention_mask)
            routing.router_inputs = pooled
            routing.router_logits = self.router(pooled)
            routing.row_experts = routing.router_logits.argmax(dim=-1)
        return self._route_rows(hidden, routing.row_experts)

    def _route_rows(self, hidden: Tensor, row_experts: Tensor) -> Tensor:
        if row_experts.shape[0] != hidden.shape[0]:
            raise RuntimeError(f"routing decided {row_experts.shape[0]} rows but the layer received {hidden.shape[0]}")
        chosen = torch.unique(row_experts)
        if len(chosen) == 1:
            return self.experts[int(chosen[0])](hidden)
        output = hidden.new_zeros(hidden.shape)
        for expert in chosen.tolist():
            rows = (row_experts == expert).nonzero(as_tuple=True)[0]
            output = output.index_copy(0, rows, self.experts[expert](hidden.index_select(0, rows)))
        return output


def _masked_mean(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask[:, : hidden.shape[1]].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
