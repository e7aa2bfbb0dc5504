"""The token-level policy-gradient surrogate shared by memorization (A = 1) and exploration (GRPO A).

Per completion token t of row i, with ratio rho = exp(logp - logp_old):
    l_it = -min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i) + beta * KL_it
    KL_it = exp(logp_ref - logp) - (logp_ref - logp) - 1            (k3 estimator, >= 0)
With one update per batch of rollouts (mu = 1) logp_old = logp.detach(), so rho = 1 and the gradient is
-A * grad logp: for A = 1 exactly the SFT (cross-entropy) gradient.

Aggregation over the step (sums run over the rows that are forwarded, those with A != 0; T_i completion tokens
of row i, L = max_new_tokens; N rows and T tokens in the denominators, as set by the loss scale below):
    grpo     per-row token means over N rows:   (1/N) sum_i (1/T_i) sum_t l_it
    bnpo     scale "active_rows": token mean within each micro-batch, averaged over the micro-batches;
             scale "rollouts":    sum of all token losses / T   (the step is one batch)
    dr_grpo  sum of all token losses / (N * L)
    dapo     sum of all token losses / T   (token mean over the whole step)
Loss scale (`[train].loss_scale`):
    rollouts     N and T count EVERY row of the step, forwarded or not: the B*K rollouts, with a memorized
                 group's first rollout replaced by its reference target (B rows for SFT). Rows with A = 0 add
                 nothing to the sums but dilute the step, as in the authors' trainer and TRL's GRPO: a step where
                 most groups are skipped makes a small update.
    active_rows  N and T count only the forwarded rows: every step has unit weight.
Each micro-batch's loss is scaled so that the accumulated gradient equals that of the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch



@dataclass(frozen=True)
class StepTotals:
    """The step's denominators (rows and tokens per the loss scale), so micro-batch losses add up to the step loss."""

    rows: int
    tokens: int
    micro_batches: int  # forwarded micro-batches
    max_new_tokens: int
    scale: str = "active_rows"  # [train].loss_scale: "rollouts" or "active_rows"


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
) -> torch.Tensor:
    """Per-token -min(rho A, clip(rho) A); `advantages` has one value per row."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    return -torch.minimum(unclipped, clipped)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, totals: StepTotals) -> torch.Tensor:
    """Reduce masked per-token losses of one micro-batch to its share of the step loss."""
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / totals.rows
    if loss_type == "bnpo" and totals.scale == "active_rows":
        return masked.sum() / mask.sum().clamp(min=1) / totals.micro_batches
    if loss_type in ("bnpo", "dapo"):
        return masked.sum() / max(totals.tokens, 1)
    if loss_type == "dr_grpo":
        return masked.sum() / (totals.rows * totals.max_new_tokens)
    raise ValueError(f"unknown loss_type '{loss_type}'")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    totals: StepTotals,
    eps_low: float,
    eps_high: float,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch loss and its diagnostics (clip fraction, mean KL)."""
    per_token = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    stats = {"clip_fraction": _clip_fraction(logp, old_logp, advantages, mask, eps_low, eps_high)}
    if beta > 0:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = float((kl.detach() * mask).sum() / mask.sum().clamp(min=1))
    return aggregate(per_token, mask, loss_type, totals), stats


def _clip_fraction(logp, old_logp, advantages, mask, eps_low, eps_high) -> float:
    with torch.no_grad():
        ratio = torch.exp(logp - old_logp)
        adv = advantages.unsqueeze(-1)
        clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        return float((clipped.float() * mask).sum() / mask.sum().clamp(min=1))
