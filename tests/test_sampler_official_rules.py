"""DPM-Solver++(2M/3M), UniPC-bh2 (orders 2, 3) and EVODiff against an independent float64
implementation of the official update rules, written here in x-space the way the official
DPM-Solver / UniPC codes and diffusers' DPMSolverMultistepScheduler / UniPCMultistepScheduler
state them (alpha_t, sigma_t, lambda = log(alpha / sigma), their D1 / D2 and rho weights, their
lower-order-final rules; EVODiff's kappa and sigma as its official code keeps them apart), on a
DDPM linear-beta schedule at 10, 25 and 50 steps.

jaxdiff solves in scaled coordinates with its own weight formulas (samplers/dpm_solver.py,
samplers/unipc.py), so agreement to 1e-4 checks the two derivations against each other.  The
denoiser is the toy mixture's exact posterior mean, computed again here in float64.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers, schedules
from jaxdiff.toy import gmm as G

GMM = G.toy_mixture_2d()
SCHED = schedules.VPLinear()
ORACLE = G.oracle_denoiser(GMM, SCHED, conditional=False)
X_T = np.asarray(jax.random.normal(jax.random.key(3), (256, 2)), np.float64)


def posterior_mean(x, alpha, sigma):
    """E[x0 | x_t = x] of the isotropic mixture, float64: responsibilities of
    N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I) times each component's Gaussian posterior mean."""
    mu = np.asarray(GMM.means, np.float64)
    s2 = np.asarray(GMM.stds, np.float64) ** 2
    logw = np.asarray(GMM.log_weights, np.float64)
    var = alpha**2 * s2 + sigma**2                                        # (K,)
    diff = x[:, None, :] - alpha * mu[None]                               # (B, K, d)
    logp = logw - 0.5 * (diff**2).sum(-1) / var - 0.5 * mu.shape[1] * np.log(var)
    resp = np.exp(logp - logp.max(1, keepdims=True))
    resp /= resp.sum(1, keepdims=True)
    means = mu[None] + (alpha * s2 / var)[None, :, None] * diff
    return (resp[..., None] * means).sum(1)


def _grid(steps):
    g = schedules.sampling_grid(SCHED, steps, "uniform_t")
    alpha = np.asarray(g.alpha, np.float64)
    sigma = alpha * np.asarray(g.sigma_ve, np.float64)
    return g, alpha, sigma


def _lam(alpha, sigma):
    with np.errstate(divide="ignore"):
        return np.log(alpha) - np.log(sigma)      # +inf at the clean end


def dpm_solver_pp(steps, order, lower_order_final=True):
    """Multistep DPM-Solver++ as the official code / diffusers write it: first-order, the
    midpoint second-order and the third-order multistep updates; the order of step i is
    min(order, i + 1), first order on the last step (zero final sigma), and with fewer than 15
    steps also second order on the second-to-last."""
    _, alpha, sigma = _grid(steps)
    lam = _lam(alpha, sigma)
    x, ms = X_T.copy(), []
    for i in range(steps):
        ms.append(posterior_mean(x, alpha[i], sigma[i]))
        short = lower_order_final and steps < 15
        p = min(order, i + 1)
        if i == steps - 1:
            p = 1
        elif i == steps - 2 and short:
            p = min(p, 2)
        a_t, s_t = alpha[i + 1], sigma[i + 1]
        h = lam[i + 1] - lam[i]
        m0 = ms[-1]
        if p == 1:
            x = (s_t / sigma[i]) * x - a_t * np.expm1(-h) * m0
            continue
        h0 = lam[i] - lam[i - 1]
        r0 = h0 / h
        if p == 2:
            d1 = (m0 - ms[-2]) / r0
            x = (s_t / sigma[i]) * x - a_t * np.expm1(-h) * m0 - 0.5 * a_t * np.expm1(-h) * d1
            continue
        h1 = lam[i - 1] - lam[i - 2]
        r1 = h1 / h
        d1_0, d1_1 = (m0 - ms[-2]) / r0, (ms[-2] - ms[-3]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        x = ((s_t / sigma[i]) * x - a_t * np.expm1(-h) * m0
             + a_t * (np.expm1(-h) / h + 1.0) * d1
             - a_t * ((np.expm1(-h) + h) / h**2 - 0.5) * d2)
    return x


def _unipc_weights(hh, rks, order):
    """UniPC's bh2 system: R (order x order) with rows rks^(k-1) and b_k = k! phi_{k+1} / B(h),
    built by the official recursion on h_phi_k."""
    h_phi_1 = np.expm1(hh)
    b_h = h_phi_1                      # B(h) = e^{hh} - 1 for bh2
    h_phi_k = h_phi_1 / hh - 1.0
    fact, rows, b = 1, [], []
    for k in range(1, order + 1):
        rows.append(np.asarray(rks) ** (k - 1))
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return np.stack(rows), np.asarray(b), h_phi_1, b_h


def unipc(steps, order, lower_order_final=True):
    """UniPC-bh2 with data prediction as the official code / diffusers write it: at each point
    the corrector UniC (order of the previous predictor) with the new model output, then the
    predictor UniP of order min(order, steps left, points known); the last step (to zero sigma)
    is first order and not corrected."""
    _, alpha, sigma = _grid(steps)
    lam = _lam(alpha, sigma)
    x, ms, last, last_order = X_T.copy(), [], None, None
    for i in range(steps):
        m_new = posterior_mean(x, alpha[i], sigma[i])
        if last is not None:                       # UniC at point i, correcting step i - 1
            h = lam[i] - lam[i - 1]
            m0 = ms[-1]
            rks = [(lam[i - 1 - k] - lam[i - 1]) / h for k in range(1, last_order)] + [1.0]
            d1s = [(ms[-(k + 1)] - m0) / rks[k - 1] for k in range(1, last_order)]
            R, b, h_phi_1, b_h = _unipc_weights(-h, rks, last_order)
            rhos = np.array([0.5]) if last_order == 1 else np.linalg.solve(R, b)
            corr = sum(r * d for r, d in zip(rhos[:-1], d1s)) if d1s else 0.0
            x = ((sigma[i] / sigma[i - 1]) * last - alpha[i] * h_phi_1 * m0
                 - alpha[i] * b_h * (corr + rhos[-1] * (m_new - m0)))
        ms.append(m_new)
        p = min(order, steps - i) if lower_order_final else order
        p = min(p, i + 1)
        last, last_order = x, p
        if i == steps - 1:                         # to sigma = 0: x = D
            x = ms[-1]
            break
        h = lam[i + 1] - lam[i]
        m0 = ms[-1]
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, p)] + [1.0]
        d1s = [(ms[-(k + 1)] - m0) / rks[k - 1] for k in range(1, p)]
        R, b, h_phi_1, b_h = _unipc_weights(-h, rks, p)
        if p == 1:
            pred = 0.0
        else:
            rhos = np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
            pred = sum(r * d for r, d in zip(rhos, d1s))
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * h_phi_1 * m0 - alpha[i + 1] * b_h * pred
    return x


def _jaxdiff(name, steps, **options):
    grid, _, _ = _grid(steps)
    out = samplers.sample(ORACLE, jax.random.key(0), X_T.shape, sampler=name, grid=grid,
                          x_T=jnp.asarray(X_T, jnp.float32), **options)
    return np.asarray(out.x0, np.float64)


CASES = [("dpmpp_2m", {}, lambda n, **k: dpm_solver_pp(n, 2, **k)),
         ("dpmpp_3m", {}, lambda n, **k: dpm_solver_pp(n, 3, **k)),
         ("unipc", {}, lambda n, **k: unipc(n, 2, **k)),
         ("unipc", {"order": 3}, lambda n, **k: unipc(n, 3, **k))]


@pytest.mark.parametrize("steps", [10, 25, 50])
@pytest.mark.parametrize("name,options,reference", CASES, ids=lambda c: str(c)[:12])
def test_matches_the_official_rules_in_float64(name, options, reference, steps):
    got = _jaxdiff(name, steps, **options)
    want = reference(steps)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_the_reference_tells_the_variants_apart():
    """The comparison can fail: the Taylor-consistent 3M weight and the full order to the end
    differ from the official rules by far more than the tolerance."""
    want3 = dpm_solver_pp(10, 3)
    assert np.max(np.abs(_jaxdiff("dpmpp_3m", 10, form="taylor") - want3)) > 1e-3
    no_lowering = _jaxdiff("dpmpp_3m", 10, form="official", lower_order_final=False)
    np.testing.assert_allclose(no_lowering, dpm_solver_pp(10, 3, lower_order_final=False),
                               rtol=0, atol=1e-4)
    assert np.max(np.abs(no_lowering - want3)) > 1e-3
    full = _jaxdiff("unipc", 10, order=3, lower_order_final=False)
    np.testing.assert_allclose(full, unipc(10, 3, lower_order_final=False), rtol=0, atol=1e-4)
    assert np.max(np.abs(full - unipc(10, 3))) > 1e-3



def _proj(u, v):
    """The official projection coefficient: clamp(<u, v> / <v, v>, -2, 2), per sample ((B, d)
    data: one coefficient per sample)."""
    return np.clip((u * v).sum(-1, keepdims=True) / (v * v).sum(-1, keepdims=True), -2, 2)


def evodiff(steps):
    """EVODiff (order 2, data prediction, lower_order_final, denoise_to_zero) in x-space as the
    official code writes it: kappa = sigma / alpha for the step sizes h = 1/kappa_t - 1/kappa_s
    and the ratio r, the marginal std sigma for the ratios in the balance, the last step and the
    consistency; the weight's normalised time is (sigma_t + sigma_lo) / (sigma_hi + sigma_lo)
    (the official code's time label, which is sigma on its EDM grids; jaxdiff uses the std on
    every schedule, with the schedule's ends).  The official grid has ``steps - 1`` steps over
    this grid's ``steps`` noisy points, then denoises to zero."""
    _, alpha, sigma = _grid(steps)
    alpha, sigma = alpha[:-1], sigma[:-1]                  # the noisy points
    kappa = sigma / alpha
    sig_hi = float(SCHED.sigma(jnp.float32(SCHED.t_max)))
    sig_lo = float(SCHED.sigma(jnp.float32(SCHED.t_min)))
    n = steps - 1                                          # the official ``steps``
    x = X_T.copy()
    m = [posterior_mean(x, alpha[0], sigma[0])]
    h = 1 / kappa[1] - 1 / kappa[0]
    x = (sigma[1] / sigma[0]) * x + sigma[1] * h * m[-1]   # DDIM
    m.append(posterior_mean(x, alpha[1], sigma[1]))
    for step in range(2, n + 1):
        h = 1 / kappa[step] - 1 / kappa[step - 1]
        q0, q01 = sigma[step] / sigma[step - 1], sigma[step - 1] / sigma[step - 2]
        x_euler = q0 * x + sigma[step] * h * m[-1]
        if step == n:                                      # order 1: the last step
            g = 1 - np.sqrt(sigma[step] * sigma[step - 1])
            r_f = 1 - 0.5 * np.sqrt(q0) if q0 < 0.5 else 1 - 0.5 * np.sqrt(q0 - 0.5)
            x = g * x_euler + 0.5 * sigma[step] * h * (m[-1] - r_f * m[-2])
            break
        m1, m0 = m[-2], m[-1]
        r = np.log(kappa[step - 2] / kappa[step - 1]) / np.log(kappa[step - 1] / kappa[step])
        tau = (sigma[step] + sig_lo) / (sig_hi + sig_lo)
        w = 0.5 * (1 - tau**2)
        base = np.sqrt(q0 / q01)
        beta1 = (1 - w) * base + w * _proj(m0, m1)
        d1 = m0 - beta1 * m1
        r_i = np.clip(1 / (1 + np.exp(-0.25 * np.abs(beta1))) * r, 0.25 * r, 1.5 * r)
        x = x_euler + 0.5 * sigma[step] * h / r_i * d1     # the probe
        m_t = posterior_mean(x, alpha[step], sigma[step])
        beta2 = (1 - w) * base + w * _proj(m_t, m0)
        d2 = m_t - beta2 * m0
        b_pre, b_next = d1 / r / h, r / h * d2
        eta = 0.5 / (1 + np.exp(-np.abs(0.5 * _proj(b_next + b_pre, b_next - b_pre))))
        b_theta = -eta / r * d1 + r * (1 - eta) * d2
        p1 = x - x_euler - 0.5 * sigma[step] * h / r_i * b_theta
        zeta_star = _proj(p1, d1) / (h * sigma[step])
        if n > 20:
            c = 1 / (1 + np.exp(-_proj(m0, (m0 - m1) / h) * (2 - q0**2)))
            zeta = 1 / (1 + np.exp((np.abs(zeta_star) - 0.5) * c))
        else:
            zeta = 1 / (1 + np.exp(-(np.abs(zeta_star) - 0.5)))
        x = x_euler + 0.5 * sigma[step] * h / zeta * b_theta
        m = [m0, m_t]
    return posterior_mean(x, alpha[n], sigma[n])            # denoise to zero


@pytest.mark.parametrize("steps", [10, 21, 25, 50])
def test_evodiff_matches_the_official_rule_in_float64(steps):
    """21 steps are 20 official steps: the last solve with the short-solve zeta rule."""
    got = _jaxdiff("evodiff", steps)
    want = evodiff(steps)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
