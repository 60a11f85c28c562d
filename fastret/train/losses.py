"""BioHiCL's training losses: align embedding similarity with MeSH label similarity.

For a batch of B documents with embedding cosine SimE [B, B] and label similarity SimL [B, B]
(`fastret.kernels.mesh_similarity`), over the pairs (i, j), i != j, of documents that both have
known labels (a document with no known labels has no SimL to learn from, so it is left out):

    L_mse = mean over those pairs of (SimE(i, j) - SimL(i, j))^2

    L_con: positives P(i) = {p : SimL(i, p) > beta}, negatives N(i) = {n : SimL(i, n) == 0},
           pairs in between ignored;
           L_con = mean over (i, p in P(i)) of
                   -SimL(i, p) * log( exp(SimE(i,p)/tau) / (exp(SimE(i,p)/tau) + sum_{n in N(i)} exp(SimE(i,n)/tau)) )
           and 0 (not NaN) when the batch has no positive pair.

    L = L_mse + lambda * L_con          (defaults lambda = 0.1, beta = 0.3, tau = 0.05)

The published method is known from summaries only, so every constant is a parameter (and a
`TrainConfig` field).

An optional retrieval anchor (fastret's addition, off unless `lambda_anchor > 0`): each document
that comes with a query of its own (a PubMedQA question, else its title) should keep scoring the
batch's documents as the base model did,

    L_anchor = mean over (query i, document j) of (<q_i, d_j> - <q0_i, d0_j>)^2

(q0, d0: the frozen base model's embeddings), so the label alignment reshapes document-document
similarity without wearing away the query-document similarity that retrieval rests on.
"""

from __future__ import annotations

import torch


def pair_mask(labelled: torch.Tensor | None, size: int, device) -> torch.Tensor:
    """bool [B, B]: pairs i != j whose documents both have labels (all documents if None)."""
    off_diagonal = ~torch.eye(size, dtype=torch.bool, device=device)
    if labelled is None:
        return off_diagonal
    labelled = labelled.to(device=device, dtype=torch.bool)
    return off_diagonal & labelled[:, None] & labelled[None, :]


def _check(sim_e: torch.Tensor, sim_l: torch.Tensor) -> None:
    if sim_e.ndim != 2 or sim_e.shape[0] != sim_e.shape[1] or sim_e.shape != sim_l.shape:
        raise ValueError(f"SimE and SimL must both be square [B, B], got {tuple(sim_e.shape)} and {tuple(sim_l.shape)}")


def mse_loss(sim_e: torch.Tensor, sim_l: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of SimE and SimL over the valid off-diagonal pairs (0 if none)."""
    _check(sim_e, sim_l)
    valid = pair_mask(labelled, sim_e.shape[0], sim_e.device)
    squared = (sim_e - sim_l.to(sim_e.dtype)).square()
    return (squared * valid).sum() / valid.sum().clamp(min=1)


def contrastive_loss(sim_e: torch.Tensor, sim_l: torch.Tensor, beta: float = 0.3, tau: float = 0.05,
                     labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Hierarchy-aware contrastive loss (module docstring); 0 when the batch has no positive pair."""
    _check(sim_e, sim_l)
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    valid = pair_mask(labelled, sim_e.shape[0], sim_e.device)
    sim_l = sim_l.to(sim_e.dtype)
    positive = valid & (sim_l > beta)
    negative = valid & (sim_l == 0)
    logits = sim_e / tau
    # log(sum over negatives of exp(logit)) per anchor, -inf where an anchor has no negative
    negatives = torch.logsumexp(logits.masked_fill(~negative, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - torch.logaddexp(logits, negatives)  # [B, B]: log p(positive) for each pair
    terms = torch.where(positive, -sim_l * log_prob, torch.zeros_like(logits))
    return terms.sum() / positive.sum().clamp(min=1)


def biohicl_loss(sim_e: torch.Tensor, sim_l: torch.Tensor, lambda_con: float = 0.1, beta: float = 0.3,
                 tau: float = 0.05, labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_mse + lambda_con * L_con; also returns the parts as floats for logging."""
    mse = mse_loss(sim_e, sim_l, labelled)
    con = contrastive_loss(sim_e, sim_l, beta, tau, labelled)
    total = mse + lambda_con * con
    return total, {"loss": float(total.detach()), "mse": float(mse.detach()), "contrastive": float(con.detach())}



def anchor_loss(scores: torch.Tensor, base_scores: torch.Tensor) -> torch.Tensor:
    """Mean squared drift of query-document scores [Q, B] from the base model's (0, not NaN, when Q == 0)."""
    if scores.ndim != 2 or scores.shape != base_scores.shape:
        raise ValueError(f"scores and base scores must both be [Q, B], got {tuple(scores.shape)} "
                         f"and {tuple(base_scores.shape)}")
    if scores.numel() == 0:
        return scores.sum()
    return (scores - base_scores.to(scores.dtype)).square().mean()
