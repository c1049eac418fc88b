"""The four losses of Region-Aware MedCLIP, as on the slides in ../shared/seeds/.

All features are L2-normalised, s(a, b) = a . b (cosine similarity) and 1 / tau = `logit_scale` (CLIP's learned
scale, already exponentiated, as open_clip returns it). The slides sum over i; `reduction="mean"` (default)
divides by the count, which keeps alpha .. lambda meaningful whatever the batch size; `reduction="sum"` is the
slides' literal form.

    L_global  = -log exp(s(z_g^i, z_t^i)/tau) / sum_j exp(s(z_g^i, z_t^j)/tau)      image -> report
                (symmetric by default: the mean of image -> report and report -> image, as open_clip.ClipLoss)
    L_ROI     = -log exp(s(z_r^i, z_t^i)/tau) / sum_j exp(s(z_r^i, z_t^j)/tau)      ROI -> phrase, over the batch's ROIs
    L_neg     = -log exp(s(z_r^i, z_t^i)/tau) / (exp(s(z_r^i, z_t^i)/tau) + sum_k exp(s(z_r^i, z_neg^ik)/tau))
    L_distill = KL(p_teacher(T | ROI_i) || p_student(T | ROI_i)),  p(T | r) = softmax_T(s(z_r, z_T) / tau)
    L_total   = alpha L_global + beta L_ROI + gamma L_neg + lambda L_distill

The teacher's text phase adds L_polarity (`teacher.text_steps`, not on the slides): L_neg with the whole image for the
ROI, a finding its report states for the phrase ("no cardiomegaly") and the opposite statement ("cardiomegaly")
as the one hard negative, class-balanced; its gradient reaches the text tower only (see polarity_loss).

Duplicate-aware (train.dedupe, default on): texts that are the same caption (equal `groups` ids, made from
vocab.normalize_text) are not negatives of each other in L_global and L_ROI: j != i with group j == group i is
left out of the denominator (masked), so two reports "No acute cardiopulmonary process." in a batch, a
bilateral phrase paired with both lungs, or one template caption on several images no longer push each other
apart. With no duplicates in the batch the masked loss equals the slides' formula exactly; `groups=None` is the
slides' literal form.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _reduce(per_item: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_item.sum() if reduction == "sum" else per_item.mean()


def mask_duplicates(logits: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """logits (N, N) with the off-diagonal cells of equal groups (N,) set to -inf: a duplicate of the positive is
    neither positive nor negative."""
    if groups is None:
        return logits
    same = groups[:, None] == groups[None, :]
    same.fill_diagonal_(False)
    return logits.masked_fill(same, float("-inf"))


def global_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, symmetric: bool = True,
                reduction: str = "mean", groups: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE between images (B, D) and their reports (B, D); row i of each is a pair. groups (B,): reports with
    equal ids are duplicates (masked, see mask_duplicates)."""
    logits = mask_duplicates(logit_scale * image @ text.T, groups)  # (B, B)
    labels = torch.arange(len(image), device=image.device)
    image_to_text = F.cross_entropy(logits, labels, reduction="none")
    if not symmetric:
        return _reduce(image_to_text, reduction)
    return _reduce((image_to_text + F.cross_entropy(logits.T, labels, reduction="none")) / 2, reduction)


def roi_loss(roi: torch.Tensor, phrase: torch.Tensor, logit_scale: torch.Tensor, reduction: str = "mean",
             groups: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of each ROI (R, D) against the phrases (R, D) of all the batch's ROIs; row i is its own phrase.
    groups (R,): phrases with equal ids are duplicates (masked)."""
    if len(roi) == 0:
        return roi.sum() * 0.0
    logits = mask_duplicates(logit_scale * roi @ phrase.T, groups)  # (R, R)
    return F.cross_entropy(logits, torch.arange(len(roi), device=roi.device), reduction=reduction)


def negative_caption_loss(roi: torch.Tensor, phrase: torch.Tensor, negatives: torch.Tensor,
                          negative_mask: torch.Tensor, logit_scale: torch.Tensor, reduction: str = "mean"
                          ) -> torch.Tensor:
    """Each ROI's phrase against its own hard negatives (the negated finding, the other side, another finding).

    roi, phrase: (R, D); negatives: (R, K, D); negative_mask: (R, K) bool, False for padding slots.
    """
    if len(roi) == 0:
        return roi.sum() * 0.0
    positive = logit_scale * (roi * phrase).sum(-1, keepdim=True)  # (R, 1)
    negative = logit_scale * torch.einsum("rd,rkd->rk", roi, negatives)  # (R, K)
    negative = negative.masked_fill(~negative_mask, float("-inf"))
    logits = torch.cat([positive, negative], dim=1)  # (R, 1 + K): the positive is class 0
    return F.cross_entropy(logits, torch.zeros(len(roi), dtype=torch.long, device=roi.device), reduction=reduction)


def polarity_loss(image: torch.Tensor, stated: torch.Tensor, opposite: torch.Tensor, classes: torch.Tensor,
                  logit_scale: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The teacher's polarity term: each image (N, D) against a finding its report states (N, D; "no cardiomegaly")
    and the opposite statement (N, D; "cardiomegaly"), -log softmax of the two. Balanced over classes (N,) (one id
    per finding and polarity: "cardiomegaly", "no cardiomegaly", ...): each class present weighs the same, so a
    bias towards "no" (most stated findings are negations) gains nothing, nor does reading one finding off another
    that is stated more often; only reading the image for that finding lowers it. It trains the text side only
    (image and scale detached): free to move, the image side would take the shortcut of pushing every image towards
    the same statements, which flattens the image space. `reduction="sum"` scales the balanced mean by the number of
    images, as a sum over them would."""
    if len(image) == 0:
        return image.sum() * 0.0
    margin = logit_scale.detach() * (image.detach() * (stated - opposite)).sum(-1)
    per = F.softplus(-margin)  # -log softmax over (stated, opposite)
    balanced = torch.stack([per[classes == c].mean() for c in torch.unique(classes)]).mean()
    return balanced * len(per) if reduction == "sum" else balanced


def distill_loss(student_roi: torch.Tensor, student_concepts: torch.Tensor, student_scale: torch.Tensor,
                 teacher_roi: torch.Tensor | None = None, teacher_concepts: torch.Tensor | None = None,
                 teacher_scale: torch.Tensor | float = 1.0, reduction: str = "mean",
                 teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_teacher || p_student) over concept prompts T, per ROI. The teacher side is precomputed (no grad):
    its embeddings, or directly its logits (R, T) = teacher_scale * teacher_roi @ teacher_concepts.T."""
    if len(student_roi) == 0:
        return student_roi.sum() * 0.0
    log_p_student = F.log_softmax(student_scale * student_roi @ student_concepts.T, dim=-1)  # (R, T)
    if teacher_logits is None:
        teacher_logits = teacher_scale * teacher_roi @ teacher_concepts.T
    log_p_teacher = F.log_softmax(teacher_logits.float(), dim=-1).detach()
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # (R,)
    return _reduce(kl, reduction)


class RegionAwareLoss(nn.Module):
    """L_total and its terms as a dict (open_clip's habit), so the trainer logs each term every step."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0, lam: float = 0.4,
                 symmetric: bool = True, reduction: str = "mean", polarity: float = 0.0):
        super().__init__()
        self.weights = {"global_loss": alpha, "roi_loss": beta, "neg_loss": gamma, "distill_loss": lam,
                        "polarity_loss": polarity}
        self.symmetric, self.reduction = symmetric, reduction

    def forward(self, image_features, text_features, logit_scale, roi_features=None, phrase_features=None,
                negative_features=None, negative_mask=None, concept_features=None, dist_roi_features=None,
                dist_concept_features=None, dist_logit_scale=None, teacher_logits=None, report_groups=None,
                phrase_groups=None, statement_image=None, statement_features=None, opposite_features=None,
                statement_classes=None) -> dict[str, torch.Tensor]:
        r = self.reduction
        zero = image_features.sum() * 0.0
        terms = {"global_loss": global_loss(image_features, text_features, logit_scale, self.symmetric, r,
                                            report_groups)}
        have_rois = roi_features is not None and phrase_features is not None
        terms["roi_loss"] = roi_loss(roi_features, phrase_features, logit_scale, r, phrase_groups) if have_rois else zero
        terms["neg_loss"] = (negative_caption_loss(roi_features, phrase_features, negative_features, negative_mask,
                                                   logit_scale, r)
                             if have_rois and negative_features is not None else zero)
        have_teacher = dist_roi_features is not None or teacher_logits is not None
        terms["distill_loss"] = (distill_loss(roi_features, concept_features, logit_scale, dist_roi_features,
                                              dist_concept_features, dist_logit_scale, r, teacher_logits)
                                 if roi_features is not None and have_teacher else zero)
        terms["polarity_loss"] = (polarity_loss(statement_image, statement_features, opposite_features,
                                                statement_classes, logit_scale, r)
                                  if statement_features is not None else zero)
        terms["total_loss"] = sum(self.weights[k] * v for k, v in terms.items())
        return terms
