"""The policy loss against direct, independent computations."""

import math

import pytest
import torch

from dyme_cli.losses import StepTotals, aggregate, k3_kl, policy_loss

CLIP = dict(eps_low=0.2, eps_high=0.2)


def _batch():
    torch.manual_seed(0)
    logp = (-torch.rand(2, 3) * 3).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([1.0, -0.5])
    return logp, mask, advantages


def test_mu1_grpo_gradient_is_minus_advantage_times_grad_logp():
    logp, mask, adv = _batch()
    totals = StepTotals(rows=2, tokens=5, micro_batches=1, max_new_tokens=3)
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, loss_type="grpo", totals=totals, **CLIP)
    loss.backward()
    got = logp.grad.clone()

    direct = logp.detach().clone().requires_grad_()
    reference = -(1.0 * direct[0, :3].sum() / 3 + (-0.5) * direct[1, :2].sum() / 2) / 2
    reference.backward()
    assert torch.allclose(got, direct.grad)
    assert loss.item() == pytest.approx(-(1.0 - 0.5) / 2)  # ratio 1: -mean over rows of A


def test_memorization_row_gradient_equals_cross_entropy_gradient():
    logits = torch.randn(4, 7, requires_grad=True)
    targets = torch.tensor([1, 5, 0, 3])
    logp = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)[None]
    totals = StepTotals(rows=1, tokens=4, micro_batches=1, max_new_tokens=4)
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 4), loss_type="grpo", totals=totals, **CLIP)
    loss.backward()
    ours = logits.grad.clone()
    logits.grad = None
    torch.nn.functional.cross_entropy(logits, targets).backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)


@pytest.mark.parametrize(
    "log_ratio, advantage, expected_loss, has_grad",
    [
        (math.log(1.5), 1.0, -1.2, False),  # ratio above 1 + eps with A > 0: clipped, no gradient
        (math.log(0.5), 1.0, -0.5, True),  # ratio below 1 - eps with A > 0: the unclipped term is smaller
        (math.log(1.5), -1.0, 1.5, True),  # A < 0, ratio high: unclipped (pessimistic) term kept
        (math.log(0.5), -1.0, 0.8, False),  # A < 0, ratio low: clipped at 1 - eps
        (math.log(1.1), 2.0, -2.2, True),  # inside the trust region: plain ratio * A
    ],
)
def test_clipping_cases_for_mu_above_one(log_ratio, advantage, expected_loss, has_grad):
    old = torch.tensor([[-1.0]])
    logp = (old + log_ratio).clone().requires_grad_()
    totals = StepTotals(rows=1, tokens=1, micro_batches=1, max_new_tokens=1)
    loss, stats = policy_loss(logp, old, torch.tensor([advantage]), torch.ones(1, 1), loss_type="grpo", totals=totals, **CLIP)
    loss.backward()
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    assert (logp.grad.abs().item() > 0) == has_grad
    assert stats["clip_fraction"] == (0.0 if has_grad else 1.0)


def test_asymmetric_clip_high():
    old = torch.tensor([[0.0]])
    logp = torch.tensor([[math.log(1.25)]], requires_grad=True)
    totals = StepTotals(rows=1, tokens=1, micro_batches=1, max_new_tokens=1)
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 1), loss_type="grpo", totals=totals,
                          eps_low=0.2, eps_high=0.28)
    assert loss.item() == pytest.approx(-1.25)  # 1.25 < 1 + 0.28: not clipped


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # The step has 4 rows and 9 tokens in 2 micro-batches; this micro-batch holds 2 rows and 5 tokens.
    totals = StepTotals(rows=4, tokens=9, micro_batches=2, max_new_tokens=3)
    assert aggregate(per_token, mask, "grpo", totals).item() == pytest.approx((2.0 + 4.5) / 4)
    assert aggregate(per_token, mask, "bnpo", totals).item() == pytest.approx(15.0 / 5 / 2)
    assert aggregate(per_token, mask, "dr_grpo", totals).item() == pytest.approx(15.0 / (4 * 3))
    assert aggregate(per_token, mask, "dapo", totals).item() == pytest.approx(15.0 / 9)


def test_micro_batches_add_up_to_the_whole_step():
    logp, mask, adv = _batch()
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        whole, _ = policy_loss(logp, logp.detach(), adv, mask, loss_type=loss_type,
                               totals=StepTotals(2, 5, 1, 3), **CLIP)
        parts = sum(
            policy_loss(logp[i : i + 1], logp[i : i + 1].detach(), adv[i : i + 1], mask[i : i + 1],
                        loss_type=loss_type, totals=StepTotals(2, 5, 2, 3), **CLIP)[0]
            for i in range(2)
        )
        assert parts.item() == pytest.approx(whole.item())


def test_kl_term():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    expected = [math.exp(-0.5) + 0.5 - 1, 0.0]
    assert k3_kl(logp, ref)[0].tolist() == pytest.approx(expected)
    totals = StepTotals(rows=1, tokens=2, micro_batches=1, max_new_tokens=2)
    loss, stats = policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), loss_type="grpo", totals=totals,
                              beta=0.1, ref_logp=ref, **CLIP)
    assert loss.item() == pytest.approx(0.1 * sum(expected) / 2)
    assert stats["kl"] == pytest.approx(sum(expected) / 2)


def test_aggregations_by_hand_over_every_row_of_the_step():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # The step holds 8 rows with 20 tokens (most with A = 0, never forwarded); this micro-batch has 2 rows, 5 tokens.
    totals = StepTotals(rows=8, tokens=20, micro_batches=2, max_new_tokens=3, scale="rollouts")
    assert aggregate(per_token, mask, "grpo", totals).item() == pytest.approx((2.0 + 4.5) / 8)
    assert aggregate(per_token, mask, "bnpo", totals).item() == pytest.approx(15.0 / 20)
    assert aggregate(per_token, mask, "dr_grpo", totals).item() == pytest.approx(15.0 / (8 * 3))
    assert aggregate(per_token, mask, "dapo", totals).item() == pytest.approx(15.0 / 20)


def test_rollouts_scale_gives_the_gradient_of_forwarding_every_row():
    """The authors' loss forwards all B*K rows and averages them; rows with A = 0 only dilute it. Forwarding only
    the rows with A != 0 under the "rollouts" scale must give the same gradient."""
    torch.manual_seed(1)
    logp_all = (-torch.rand(4, 3) * 2).requires_grad_()
    mask_all = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv_all = torch.tensor([0.7, 0.0, -0.7, 0.0])
    per_row = (-(adv_all[:, None] * logp_all) * mask_all).sum(-1) / mask_all.sum(-1)
    per_row.mean().backward()  # the authors' grpo loss at mu = 1 (ratio 1)

    active = [0, 2]
    logp = logp_all.detach()[active].clone().requires_grad_()
    totals = StepTotals(rows=4, tokens=int(mask_all.sum()), micro_batches=1, max_new_tokens=3, scale="rollouts")
    loss, _ = policy_loss(logp, logp.detach(), adv_all[active], mask_all[active], loss_type="grpo", totals=totals, **CLIP)
    loss.backward()
    assert torch.allclose(logp.grad, logp_all.grad[active])
