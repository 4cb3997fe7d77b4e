"""Loss and model properties that pin down the faithful and fixed computations (§3–§6, §9)."""
from __future__ import annotations

import pytest
import torch

from deccm.models import CrossModalVAE, DecCMStudent, ModelConfig
from deccm.models.matching import faithful_matching_loss, hinge_matching_loss
from deccm.models.vae import Encoder, block_gains, faithful_distill_kl, gaussian_kl, prior_kl, reparameterize


def _sim(pos: float, neg: float, b: int = 4) -> torch.Tensor:
    s = torch.full((b, b), neg)
    s.fill_diagonal_(pos)
    return s.requires_grad_(True)


def test_fixed_hinge_pushes_positives_up_and_negatives_down() -> None:
    s = _sim(0.1, 0.2)  # violated: negatives above positives
    hinge_matching_loss(s, margin=0.05, k=3).backward()
    assert (s.grad.diagonal() < 0).all()  # gradient descent raises positives
    off = ~torch.eye(4, dtype=torch.bool)
    assert (s.grad[off] > 0).all()  # and lowers the violating negatives


def test_fixed_hinge_is_zero_when_margin_satisfied() -> None:
    s = _sim(1.0, 0.0)
    loss = hinge_matching_loss(s, margin=0.05, k=3)
    loss.backward()
    assert loss.item() == 0.0 and (s.grad == 0).all()


def test_fixed_hinge_selects_hardest_negatives() -> None:
    s = torch.tensor([[0.5, 0.9, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]], requires_grad=True)
    hinge_matching_loss(s, margin=0.05, k=1, music_factor=1.0).backward()
    # row 0's only selected negative is column 1 (the hardest), never column 2
    assert s.grad[0, 1] > 0 and s.grad[0, 2] == 0


def test_faithful_loss_reproduces_sign_bug() -> None:
    """§9.1: violated pairs get no gradient; satisfied pairs are pushed further apart."""
    violated = _sim(0.1, 0.2)
    faithful_matching_loss(violated, margin=0.05, k=2).backward()
    assert (violated.grad == 0).all()
    satisfied = _sim(1.0, 0.0)
    loss = faithful_matching_loss(satisfied, margin=0.05, k=3)
    loss.backward()
    assert loss.item() < 0  # it *rewards* separation, without bound
    assert (satisfied.grad.diagonal() < 0).all()  # descent raises positives further...
    assert (satisfied.grad[~torch.eye(4, dtype=torch.bool)] > 0).all()  # ...on already-easy negatives


def test_faithful_selects_easiest_negatives() -> None:
    s = torch.tensor([[0.5, 0.4, -0.5], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]], requires_grad=True)
    faithful_matching_loss(s, margin=0.05, k=1).backward()
    assert s.grad[0, 2] != 0 and s.grad[0, 1] == 0  # the easiest negative (-0.5) is the one used


def test_same_track_negatives_are_masked() -> None:
    s = _sim(0.1, 0.2)
    same = torch.zeros(4, 4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    hinge_matching_loss(s, 0.05, 3, same_track=same).backward()
    assert s.grad[0, 1] == 0 and s.grad[1, 0] == 0 and s.grad[0, 2] > 0


def test_final_small_batch_does_not_crash() -> None:
    s = torch.randn(3, 3, requires_grad=True)  # k=40 > B-1 (the authors' topk crashes, §9.9)
    for fn in (faithful_matching_loss, hinge_matching_loss):
        fn(s, 0.05, 40).backward()


def test_gaussian_kl_zero_on_itself_and_nonnegative() -> None:
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    assert gaussian_kl(mu, lv, mu, lv).abs().item() < 1e-6
    for _ in range(20):
        mu2, lv2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
        assert gaussian_kl(mu, lv, mu2, lv2).item() >= 0
    # against the closed form for 1-d N(0,1) ‖ N(1, e^1)
    z, one = torch.zeros(1, 1), torch.ones(1, 1)
    expected = 0.5 * (1.0 + (1.0 + 1.0) / torch.e - 1.0)
    assert abs(gaussian_kl(z, z, one, one).item() - expected) < 1e-6


def test_faithful_distill_kl_prefers_opposite_means() -> None:
    """§5.3: the authors' formula is lower when μ_student = −μ_teacher than when equal."""
    mu = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    lv = torch.zeros(8, 16)
    assert faithful_distill_kl(-mu, lv, mu, lv) < faithful_distill_kl(mu, lv, mu, lv)
    assert gaussian_kl(-mu, lv, mu, lv) > gaussian_kl(mu, lv, mu, lv)


def test_encoder_unit_norms_and_reparameterisation() -> None:
    enc = Encoder(32, 8, unit_logvar=True)
    mu, lv = enc(torch.randn(5, 32))
    assert torch.allclose(mu.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(lv.norm(dim=-1), torch.ones(5), atol=1e-5)  # §9.12
    assert torch.equal(reparameterize(mu, lv, training=False), mu)
    assert not torch.equal(reparameterize(mu, lv, training=True), mu)
    assert prior_kl(mu, lv).item() > 0


def test_block_balance_gives_each_feature_block_the_same_weight() -> None:
    g = block_gains([1280, 8])
    assert torch.allclose((g[:1280] ** 2).sum(), (g[1280:] ** 2).sum())  # equal total variance per block
    assert torch.isclose((g ** 2).sum(), torch.tensor(1288.0))  # and the overall scale is kept
    assert torch.equal(block_gains([16]), torch.ones(16))  # one block: unchanged
    enc = Encoder(24, 4, balance_blocks=True)
    torch.manual_seed(0)
    x = torch.randn(64, 24)
    before = enc.eval()(x)[0]
    enc.set_blocks([20, 4])
    assert torch.equal(enc.gain, block_gains([20, 4])) and "gain" in enc.state_dict()
    assert not torch.allclose(enc(x)[0], before)
    with pytest.raises(ValueError, match="add up to 23, the encoder reads 24"):
        enc.set_blocks([20, 3])
    plain = Encoder(24, 4)
    plain.set_blocks([20, 4])  # an encoder that does not balance ignores the layout
    assert plain.gain is None and "gain" not in plain.state_dict()


def _student(mode: str) -> DecCMStudent:
    cfg = ModelConfig.for_mode(mode, video_dim=16, music_dim=12, latent_dim=8, n_genres=3)
    torch.manual_seed(0)
    st = DecCMStudent(cfg, CrossModalVAE(cfg), torch.tensor([0.5, 0.3, 0.2]))
    torch.nn.init.normal_(st.confounder.weight)
    return st.eval()


def _ranking_with_prior(st: DecCMStudent, prior: torch.Tensor, x_v: torch.Tensor, x_m: torch.Tensor) -> torch.Tensor:
    st.prior_mean.copy_(prior)
    return (st.video_embed(x_v) @ st.music_embed(x_m).T).argsort(dim=1)


def test_faithful_confounder_does_not_change_ranking_at_inference() -> None:
    """§6: with the linear fusion the confounder adds a per-video constant."""
    st = _student("faithful")
    x_v, x_m = torch.randn(6, 16), torch.randn(20, 12)
    a = _ranking_with_prior(st, torch.tensor([1.0, 0.0, 0.0]), x_v, x_m)
    b = _ranking_with_prior(st, torch.tensor([0.0, 0.0, 1.0]), x_v, x_m)
    assert torch.equal(a, b)


def test_fixed_confounder_can_change_ranking() -> None:
    st = _student("fixed")
    x_v, x_m = torch.randn(6, 16), torch.randn(20, 12)
    a = _ranking_with_prior(st, torch.tensor([1.0, 0.0, 0.0]), x_v, x_m)
    b = _ranking_with_prior(st, torch.tensor([0.0, 0.0, 1.0]), x_v, x_m)
    assert not torch.equal(a, b)


def test_teacher_is_frozen_inside_student() -> None:
    st = _student("fixed").train()
    assert not st.teacher.training
    before = {k: v.clone() for k, v in st.teacher.state_dict().items()}
    opt = torch.optim.Adam([p for p in st.parameters() if p.requires_grad], lr=0.1)
    x_v, x_m, prior = torch.randn(8, 16), torch.randn(8, 12), torch.softmax(torch.randn(8, 3), dim=1)
    loss, parts = st.loss(x_v, x_m, prior, torch.arange(8))
    loss.backward()
    opt.step()
    assert "distill" in parts
    for k, v in st.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_taste_adversary_learns_the_taste_while_the_encoder_is_pushed_the_other_way() -> None:
    """With ``adversary`` the head descends its cross-entropy and the video encoder ascends it (gradient reversal)."""
    cfg = ModelConfig.for_mode("fixed", video_dim=16, music_dim=12, latent_dim=8, n_genres=3, confounder="none",
                               distill="off", adversary=1.0, rec_weight=0.0)
    torch.manual_seed(0)
    st = DecCMStudent(cfg, None, torch.tensor([0.5, 0.3, 0.2])).eval()  # eval: no dropout or sampling, so passes agree
    x_v, x_m, prior = torch.randn(8, 16), torch.randn(8, 12), torch.softmax(3 * torch.randn(8, 3), dim=1)
    _, parts = st.loss(x_v, x_m, prior, torch.arange(8))
    assert "adversary" in parts

    def adv_term() -> torch.Tensor:
        st.zero_grad()
        with_adv, _ = st.loss(x_v, x_m, prior, torch.arange(8))
        st.cfg = cfg.replace(adversary=0.0)
        without, _ = st.loss(x_v, x_m, prior, torch.arange(8))
        st.cfg = cfg
        return with_adv - without  # = λ · H(d_b, softmax(h(GRL(μ_v))))

    term = adv_term()
    term.backward()
    head = [p.grad.clone() for p in st.adversary.parameters()]
    enc = {n: p.grad.clone() for n, p in st.vae.enc_v.named_parameters() if p.grad is not None}
    # the same term without the reversal: the head's gradients agree, the encoder's flip sign
    mu = st.vae.posteriors(x_v, x_m).mu_v
    st.zero_grad()
    (-(prior * torch.log_softmax(st.adversary(mu), dim=-1)).sum(-1).mean()).backward()
    for g, p in zip(head, st.adversary.parameters()):
        torch.testing.assert_close(g, p.grad)
    enc_plain = {n: p.grad for n, p in st.vae.enc_v.named_parameters() if p.grad is not None}  # the μ path
    assert enc_plain and set(enc_plain) <= set(enc)
    for n, h in enc_plain.items():
        torch.testing.assert_close(enc[n], -h)


def test_eraser_removes_every_linear_trace_of_the_taste_and_nothing_else() -> None:
    from deccm.metrics import probe_r2
    from deccm.models.erasure import erase, fit_eraser

    torch.manual_seed(0)
    z = torch.softmax(2 * torch.randn(2000, 4), dim=1)  # taste (N, G)
    content = torch.randn(2000, 6)
    x = torch.cat([content, z @ torch.randn(4, 3)], dim=1) @ torch.randn(9, 9)  # taste mixed into every coordinate
    mu, m = fit_eraser(x[:1500], z[:1500])
    xe = erase(x, mu, m)
    assert probe_r2(x[:1500].numpy(), z[:1500].numpy(), x[1500:].numpy(), z[1500:].numpy(), lam=1e-6) > 0.9
    assert probe_r2(xe[:1500].numpy(), z[:1500].numpy(), xe[1500:].numpy(), z[1500:].numpy(), lam=1e-6) < 0.02
    # the content stays readable
    assert probe_r2(xe[:1500].numpy(), content[:1500].numpy(), xe[1500:].numpy(), content[1500:].numpy(), lam=1e-6) > 0.9
    assert torch.linalg.matrix_rank(m) <= 3  # moves x within G − 1 directions only (priors sum to 1)


def test_residual_eraser_removes_the_taste_beyond_content_and_keeps_the_content_the_taste_shapes() -> None:
    """A video vector holds content c (pulled toward the uploader's genres: real content) and a visual
    style n that follows the taste only. Reference pairs (PGC: no uploader) tie content to genre.
    Erasing all of the taste loses content; erasing its residual after the PGC content view removes
    the style and keeps the content (deccm.models.erasure)."""
    import torch.nn.functional as F

    from deccm.metrics import probe_r2
    from deccm.models.erasure import content_view, erase, fit_eraser, residualize

    torch.manual_seed(0)
    g, n, n_ref = 4, 4000, 3000
    genre_dir = torch.randn(6, g)  # content directions that fit each genre
    mix = torch.randn(9, 9)  # every coordinate mixes content and style
    z = torch.softmax(2 * torch.randn(n, g), dim=1)  # uploader taste (N, G)
    c = torch.randn(n, 6) + 1.5 * (z - z.mean(0)) @ genre_dir.T  # taste pulls the content toward its genres
    style = 2.0 * (z - z.mean(0)) @ torch.randn(g, 3)  # the taste's visual style: no bearing on the music
    x = torch.cat([c, style + 0.3 * torch.randn(n, 3)], dim=1) @ mix
    c_ref = torch.randn(n_ref, 6)
    x_ref = torch.cat([c_ref, torch.randn(n_ref, 3)], dim=1) @ mix  # PGC: style varies, but follows no taste
    y_ref = F.one_hot((c_ref @ genre_dir + 0.5 * torch.randn(n_ref, g)).argmax(1), g).float()

    tr, te = slice(0, 3000), slice(3000, None)

    def probe(v: torch.Tensor, target: torch.Tensor) -> float:
        return probe_r2(v[tr].numpy(), target[tr].numpy(), v[te].numpy(), target[te].numpy(), lam=1e-6)

    full = erase(x, *fit_eraser(x, z))
    residual = erase(x, *fit_eraser(x, residualize(z, content_view(x_ref, y_ref, x))))
    # the style beyond what the true content tells of it (both follow the taste, so content predicts some of it)
    beyond = style - torch.cat([c, torch.ones(n, 1)], 1) @ torch.linalg.lstsq(torch.cat([c, torch.ones(n, 1)], 1), style).solution
    assert probe(x, beyond) > 0.8 and probe(residual, beyond) < 0.1  # the style is gone
    assert probe(residual, c) > 0.9  # the content stays, the part the taste shaped included
    assert probe(full, c) < probe(residual, c) - 0.1  # erasing all of the taste takes content with it
