"""The optimiser's parameter groups and mixup: the rules of the published recipes the loop follows.

Fixup (Zhang, Dauphin & Ma 2019), as its official CIFAR trainer does it (hongyi-zhang/Fixup,
`cifar/cifar_train.py`):
- three SGD groups: parameters whose name contains "bias" (Fixup's scalar biases and the classifier's bias),
  those whose name contains "scale" (the branch multipliers), and the rest; the first two at a tenth of the
  learning rate throughout the schedule (the trainer's step decay divides every group alike), every group with
  the same momentum and weight decay (1e-4). resviz names its Fixup parameters `fixup_bias*`, `branch_scale`
  and `linear.bias`, so the same name rule picks the same tensors.
- mixup (Zhang et al. 2018) with α = 1 by default (α = 0: plain cross-entropy): one λ ~ Beta(α, α) per batch
  and a random pairing of the batch, x ← λ x + (1 − λ) x[perm], loss λ CE(y) + (1 − λ) CE(y[perm]); resviz
  takes it as cross-entropy with the soft target λ onehot(y) + (1 − λ) onehot(y[perm]), the same number.
  The running training error counts a prediction as the trainer does: λ [= y] + (1 − λ) [= y[perm]].
The official stem init (PyTorch's default for the first conv) is the model's (`resviz.models`).

resviz draws λ and the pairing from (seed, step), so a mixup batch, like every batch, is a pure function of
them and a resumed run repeats it exactly.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PARAM_GROUPS = ("auto", "single", "fixup")
FIXUP_LR_FACTOR = 0.1  # cifar_train.py: {'params': parameters_bias, 'lr': args.base_lr/10.}, the same for scales
FIXUP_NAME_RULES = (("bias", FIXUP_LR_FACTOR), ("scale", FIXUP_LR_FACTOR))  # in the trainer's order


def groups_rule(param_groups: str, branch_init: str | None) -> str:
    """"fixup" or "single": `param_groups` with "auto" resolved (the Fixup groups for Fixup nets)."""
    if param_groups not in PARAM_GROUPS:
        raise ValueError(f"param_groups={param_groups!r} is unknown; use one of {', '.join(PARAM_GROUPS)}")
    if param_groups == "auto":
        return "fixup" if branch_init == "fixup" else "single"
    return param_groups


def param_groups(model: nn.Module, rule: str) -> list[dict]:
    """SGD parameter groups, each with `name` and `lr_factor` (its learning rate over the schedule's).
    rule "single": one group; "fixup": the official trainer's bias / scale / other groups (module doc)."""
    if rule == "single":
        return [{"params": list(model.parameters()), "name": "all", "lr_factor": 1.0}]
    if rule != "fixup":
        raise ValueError(f"rule={rule!r} is unknown; use 'single' or 'fixup'")
    named = list(model.named_parameters())
    groups = []
    for word, factor in FIXUP_NAME_RULES:  # a name with both words falls into the first, as with the trainer's lists
        taken = {id(p) for g in groups for p in g["params"]}
        groups.append({"params": [p for n, p in named if word in n and id(p) not in taken], "name": word,
                       "lr_factor": factor})
    taken = {id(p) for g in groups for p in g["params"]}
    groups.append({"params": [p for _, p in named if id(p) not in taken], "name": "others", "lr_factor": 1.0})
    return [g for g in groups if g["params"]]


def mixup_batch(x: torch.Tensor, y: torch.Tensor, alpha: float, num_classes: int, *, seed: int,
                step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ x + (1 − λ) x[perm], the soft targets λ onehot(y) + (1 − λ) onehot(y[perm])) for one batch, λ ~
    Beta(α, α) and perm drawn from (seed, step); α = 0 returns x and onehot(y). No host sync."""
    if not alpha >= 0:
        raise ValueError(f"mixup alpha={alpha!r} must be zero or positive, e.g. 1.0 (Fixup's trainer)")
    target = F.one_hot(y, num_classes).to(torch.float32)  # (B, K)
    if alpha == 0:
        return x, target
    rng = np.random.default_rng([seed, step, 0x6D6978])  # "mix"
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(len(y))).to(x.device)  # (B,)
    return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]


def soft_wrong(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ over the batch of 1 − target[prediction]: the errors of a batch with soft (mixup) targets (B, K), counted
    as the Fixup trainer counts them; equal to the number wrong for one-hot targets."""
    picked = target.gather(1, logits.detach().argmax(1, keepdim=True))  # (B, 1)
    return (1 - picked).sum()


__all__ = ["FIXUP_LR_FACTOR", "PARAM_GROUPS", "groups_rule", "mixup_batch", "param_groups", "soft_wrong"]
