"""Server-side math of KT-pFL and FedMD, free of any federated framework.

Shapes: N clients, M samples in the round's alignment subset, C classes. The subset itself is the rule
both sides share: the server sends alignment_seed(seed, r), every client draws alignment_indices from it.
probs[j] = softmax(f_j(x) / T) of client j on that subset, so probs is (N, M, C).

KT-pFL keeps an N x N knowledge coefficient matrix c (each row on the probability
simplex) and sends client i its own target s_i = sum_j c_ij p_j. FedMD sends every
client the same mean.

Numerics: the big contractions (N x N times N x M*C) run in the dtype of the
predictions (float32 for speed, float64 for exact checks); the small N x N algebra
(gradient step, step size, renormalisation) runs in float64, so rows of c sum to 1
to about 1e-15 whatever the input dtype.

Absent clients (present[j] False: no answer this round). Let A be the present set,
n = |A| and m_i = sum_{j in A} c_ij the mass row i puts on present clients.
  - update: only the block c[A, A] changes. For each present row i, q_i = c_i[A] / m_i
    (uniform 1/n if m_i = 0) is updated exactly as if only the n present clients
    existed (penalty around 1/n), renormalised onto the simplex, and written back as
    c_i[A] = m_i * q_i. Absent rows and absent columns are left bit-for-bit as they
    were, and every row still sums to 1. (A present row with m_i = 0 stays as it is.)
  - targets: s_i = sum_{j in A} (c_ij / m_i) p_j for every client i (uniform over A
    if m_i = 0). Absent clients never enter anybody's target.
With everybody present, both reduce to the plain rules (m_i = 1, q = c).
"""

import numpy as np
import torch

from fedkt.config import NORMALIZATIONS, OBJECTIVES, TARGET_SHIFTS, WEIGHTINGS

LOGIT_BOUND = 1e4  # |logit| above this is rejected by check_predictions
KL_EPS = 1e-12  # floor on s_i inside log (only bites when a row of c has zeros)
PATIENCE = 5  # KT-pFL with coef_tol > 0: steps on c without a tol-sized improvement before they stop


# -----------------------------------------------------------------------------
# small helpers

def _as_tensor(x):
    """Torch view of x (no copy for float32/float64 arrays) and whether x was numpy."""
    was_numpy = not isinstance(x, torch.Tensor)
    t = torch.from_numpy(np.ascontiguousarray(x)) if was_numpy else x
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t, was_numpy


def _out(t, was_numpy):
    return t.cpu().numpy() if was_numpy else t


def _present_mask(present, n):
    """Boolean (n,) tensor from None (all), a boolean mask or a list of indices."""
    if present is None:
        return torch.ones(n, dtype=torch.bool)
    p = torch.as_tensor(np.asarray(present))
    if p.dtype != torch.bool:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[p.long()] = True
        p = mask
    if p.shape != (n,):
        raise ValueError(f"present must have shape ({n},), got {tuple(p.shape)}")
    if not p.any():
        raise ValueError("no client is present")
    return p


def _row_normalized(w):
    """Rows of w (float64) divided by their sums; uniform where a row sums to 0."""
    mass = w.sum(1, keepdim=True)
    return torch.where(mass > 0, w / mass.clamp_min(1e-300), 1.0 / w.shape[1]), mass


def soft_predictions(logits, temperature=1.0):
    """softmax(logits / T) along the class (last) axis; numpy in -> numpy out."""
    t, was_numpy = _as_tensor(logits)
    return _out(torch.softmax(t / temperature, dim=-1), was_numpy)


def adaptive_step(grad_abs_mean):
    """Per-row step of the KT-pFL code (tests/helpers.py restates it for one row): start at 1.0 and, 5 times, divide by 5 while the
    mean |grad| times the step is above 0.01 and multiply by 5 while it is below; the
    product ends in [0.01, 0.05] (the step stays within 5^-5 .. 5^5)."""
    g = grad_abs_mean.clone()
    lr = torch.ones_like(g)
    for _ in range(5):  # the code's exact sequence of two ifs, on all rows at once
        big = g > 0.01
        g, lr = torch.where(big, g / 5, g), torch.where(big, lr / 5, lr)
        small = g < 0.01
        g, lr = torch.where(small, g * 5, g), torch.where(small, lr * 5, lr)
    return lr


def project_simplex(v):
    """Euclidean projection of each row of v onto the probability simplex (sort-based)."""
    n = v.shape[1]
    u = v.sort(dim=1, descending=True).values
    css = u.cumsum(1) - 1
    k = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    support = (u - css / k) > 0
    r = support.sum(1, keepdim=True)  # size of the support, >= 1
    theta = css.gather(1, r - 1) / r
    return (v - theta).clamp_min(0)


def _normalize(q, how, tau):
    if how == "softmax":
        return torch.softmax(q / tau, dim=1)
    return project_simplex(q)


def _gram(flat):
    """flat @ flat.T in float64, computing the symmetric off-diagonal block once (3/4 of
    the flops of one plain matmul)."""
    h = flat.shape[0] // 2
    a, b = flat[:h], flat[h:]
    ab = a @ b.T
    top = torch.cat([a @ a.T, ab], 1)
    bottom = torch.cat([ab.T, b @ b.T], 1)
    return torch.cat([top, bottom], 0).double()


def similarity_weights(flat, weighting, topk=3):
    """Row-stochastic (n, n) weights from the cosine similarity of flattened predictions.
    "cosine": c_ij proportional to max(cos_ij, 0). "topk": 1/k on the k most similar
    clients of each row (itself always included), 0 elsewhere."""
    gram = _gram(flat)
    norm = gram.diagonal().sqrt().clamp_min(1e-30)
    cos = (gram / norm[:, None] / norm[None, :]).clamp_min(0)
    cos.fill_diagonal_(1.0)
    if weighting == "cosine":
        return cos / cos.sum(1, keepdim=True)
    n = cos.shape[0]
    k = min(topk, n)
    cos.fill_diagonal_(float("inf"))  # self first, whatever the ties
    top = cos.topk(k, dim=1).indices
    return torch.zeros(n, n, dtype=torch.float64, device=flat.device).scatter_(1, top, 1.0 / k)


# -----------------------------------------------------------------------------
# KT-pFL objective, vectorised over clients

def _data_grad(q, flat, objective, num_samples, gram=None):
    """d/dq of sum_i D(p_i, s_i) with s = q @ flat; q (n, n) float64, flat (n, M*C).
    KL:  D_i = (1/M) sum p_i log(p_i / s_i)    -> grad = -(1/M) (P / S) P^T
    MSE: D_i = mean over M*C of (p_i - s_i)^2  -> grad = 2/(M C) (q G - G), G = P P^T"""
    return _data_loss_then_grad(q, flat, objective, num_samples, gram, with_loss=False)[1]()


def _data_loss_then_grad(q, flat, objective, num_samples, gram=None, with_loss=True):
    """(sum_i D_i at q less its constant part (KL: the entropy term; MSE: sum p^2), or None without with_loss;
    a function giving the gradient). The loss comes from the S = q @ P the KL gradient needs anyway (one
    elementwise log more); the gradient's own product is only computed when asked for."""
    if objective == "kl":
        S = q.to(flat.dtype) @ flat
        S.clamp_min_(KL_EPS)
        # S >= KL_EPS, so no 0 * log 0; row sums in flat's dtype (pairwise, exact to ~1e-9 here), then float64
        loss = -(flat * S.log()).sum(1).double().sum().item() / num_samples if with_loss else None
        # reuses S's memory: call once
        return loss, lambda: -(torch.div(flat, S, out=S) @ flat.T).double() / num_samples
    loss = ((q @ gram * q).sum() - 2 * (q * gram).sum()).item() / flat.shape[1] if with_loss else None
    return loss, lambda: 2.0 * (q @ gram - gram) / flat.shape[1]


def _data_loss(q, flat, objective, num_samples):
    S = q.to(flat.dtype) @ flat
    if objective == "kl":
        kl = torch.special.xlogy(flat, flat) - torch.special.xlogy(flat, S.clamp_min_(KL_EPS))
        return kl.double().sum().item() / num_samples
    return ((flat - S) ** 2).double().sum().item() / flat.shape[1]


def _loss_constant(flat, objective, num_samples):
    """The part of sum_i D_i that does not depend on c (what _data_grad's loss leaves out)."""
    if objective == "kl":
        return torch.special.xlogy(flat, flat).double().sum().item() / num_samples
    return (flat.double() ** 2).sum().item() / flat.shape[1]


class KnowledgeCoefficients:
    """The KT-pFL knowledge coefficient matrix c (N x N, float64 numpy, rows on the simplex).

    Each round: update(probs, present) takes `steps` gradient steps on
        L(c) = sum_i D(p_i, s_i(c)) + rho * ||c - 1/N||^2,   s_i = sum_j c_ij p_j,
    each followed by row renormalisation (softmax(row / tau), or projection onto the
    simplex), all rows at once; then targets(probs, present) gives client i its s_i.
    step_size=None uses the KT-pFL code's adaptive per-row step (see adaptive_step).
    device: where the update and the targets are computed (c itself stays a CPU numpy array);
    "cpu" (default), "auto" (cuda where the machine has it) or e.g. "cuda" for a server with a GPU
    (results then differ in the last digits).
    weighting="cosine" / "topk" replace the trained c by similarity weights.
    steps=k is the single-step update applied k times to the same predictions (tol=0). tol > 0
    stops them when L has stopped falling: the best c seen is kept, and the steps end once
    PATIENCE steps in a row did not lower the best L by tol * L (at most k steps). Why not a
    test on the change of c: the adaptive step keeps the step's length, so c never settles
    (docs/RESULTS.md, server step). L comes from the product q @ P the next step's gradient needs
    anyway (KL: one log more), so a step costs what it did.

    Caveat of the adaptive step: it fixes the step's length (mean |change| of a row of
    0.01-0.05 before renormalisation), not rho, so c hovers around the minimiser instead
    of settling, and for rho > ~3000 (2 * rho * 5^-5 > 2) it diverges. A fixed
    step_size below 1 / (2 * rho) is a plain convergent descent on the penalty.
    """

    def __init__(self, num_clients, rho=0.7, objective="kl", step_size=None, steps=1, tol=0.0,
                 normalize="softmax", tau=0.2, weighting="trained", topk=3, device="cpu"):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if num_clients < 1 or steps < 1 or topk < 1 or tau <= 0 or rho < 0 or not 0 <= tol <= 1:
            raise ValueError("need num_clients, steps, topk >= 1, tau > 0, rho >= 0 and 0 <= tol <= 1")
        self.num_clients = int(num_clients)
        self.rho, self.objective, self.step_size, self.steps = float(rho), objective, step_size, int(steps)
        self.tol = float(tol)
        self.last_steps, self.last_loss = 0, None  # of the last update: steps computed on c, objective of the c kept
        self.normalize, self.tau, self.weighting, self.topk = normalize, float(tau), weighting, int(topk)
        self.c = np.full((num_clients, num_clients), 1.0 / num_clients)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for the coefficient update, but this machine has no CUDA; "
                             "use 'auto' or 'cpu'")

    _CONFIG = ("rho", "objective", "step_size", "steps", "tol", "normalize", "tau", "weighting", "topk")

    def _inputs(self, probs, present):
        """(N, M, C) tensor, its numpy-ness, present indices and the (n, M*C) present block."""
        P3, was_numpy = _as_tensor(probs)
        P3 = P3.to(self.device)
        if P3.ndim != 3 or P3.shape[0] != self.num_clients:
            raise ValueError(f"probs must be (N={self.num_clients}, M, C), got {tuple(P3.shape)}")
        mask = _present_mask(present, self.num_clients)
        idx = mask.nonzero().squeeze(1)
        block = P3 if bool(mask.all()) else P3[idx.to(self.device)]
        return P3, was_numpy, idx.numpy(), block.reshape(len(idx), -1)

    def _tensor(self, block):
        return torch.from_numpy(block).to(self.device)

    def update(self, probs, present=None):
        """One round of update of c from the (N, M, C) soft predictions; returns a copy of c."""
        P3, _, idx, flat = self._inputs(probs, present)
        ix = np.ix_(idx, idx)
        q, mass = _row_normalized(self._tensor(self.c[ix]))
        if self.weighting == "trained":
            q = self._trained_steps(q, flat, P3.shape[1])
        else:
            q = similarity_weights(flat, self.weighting, self.topk)
            self.last_steps, self.last_loss = 0, None
        self.c[ix] = (mass * q).cpu().numpy()
        return self.c.copy()

    def _trained_steps(self, q, flat, num_samples):
        """Up to `steps` steps on the present block q. tol = 0: every step is taken and the last c kept (the
        KT-pFL code's way). tol > 0: the objective is watched, the best c seen is kept, and the steps stop once
        PATIENCE steps in a row have not improved on the best by tol of its value. Sets last_steps (steps
        computed: what the round cost) and last_loss (the objective at the returned q; None when tol = 0)."""
        n = q.shape[0]
        gram = _gram(flat) if self.objective == "mse" else None  # reused across steps
        if self.tol == 0:
            for _ in range(self.steps):
                q = self._step(q, _data_grad(q, flat, self.objective, num_samples, gram), n)
            self.last_steps, self.last_loss = self.steps, None
            return q
        constant = _loss_constant(flat, self.objective, num_samples)
        best_q, best_loss, stale = q, float("inf"), 0
        for taken in range(self.steps + 1):  # the objective of c after `taken` steps, then (maybe) one more step
            data_loss, data_grad = _data_loss_then_grad(q, flat, self.objective, num_samples, gram)
            loss = constant + data_loss + self.rho * ((q - 1.0 / n) ** 2).sum().item()
            stale = 0 if taken == 0 or loss < best_loss - self.tol * abs(best_loss) else stale + 1
            if loss < best_loss:
                best_q, best_loss = q, loss
            if stale == PATIENCE or taken == self.steps:
                break
            q = self._step(q, data_grad(), n)
        self.last_steps, self.last_loss = taken, best_loss
        return best_q

    def _step(self, q, data_grad, n):
        """One renormalised gradient step on L from q."""
        grad = data_grad + 2 * self.rho * (q - 1.0 / n)
        lr = adaptive_step(grad.abs().mean(1))[:, None] if self.step_size is None else self.step_size
        return _normalize(q - lr * grad, self.normalize, self.tau)

    def targets(self, probs, present=None):
        """(N, M, C) personalised targets: row i is s_i = sum_j c_ij p_j over present j."""
        P3, was_numpy, idx, flat = self._inputs(probs, present)
        w, _ = _row_normalized(self._tensor(self.c[:, idx]))
        return _out((w.to(flat.dtype) @ flat).reshape(P3.shape), was_numpy)

    def loss(self, probs, present=None):
        """L(c) on the present block (the quantity update descends), as a float."""
        P3, _, idx, flat = self._inputs(probs, present)
        q, _ = _row_normalized(self._tensor(self.c[np.ix_(idx, idx)]))
        penalty = self.rho * ((q - 1.0 / len(idx)) ** 2).sum().item()
        return _data_loss(q, flat, self.objective, P3.shape[1]) + penalty

    def state_dict(self):
        return {"c": self.c.copy(), "num_clients": self.num_clients,
                **{k: getattr(self, k) for k in self._CONFIG}}

    def load_state_dict(self, state):
        c = np.array(state["c"], dtype=np.float64)
        if c.shape != (self.num_clients, self.num_clients):
            raise ValueError(f"c has shape {c.shape}, expected ({self.num_clients}, {self.num_clients})")
        for k in self._CONFIG:
            if k in state:
                setattr(self, k, state[k])
        self.c = c




def shift_targets(targets, class_counts, how="classes"):
    """A client's own view of a soft target (M, C), given how many private training images it has of each
    class (C,). Runs on the client (algorithm.target_shift); the server never sees class_counts.

    "none": the target as sent.
    "classes": only the mass on the client's own classes (count > 0), rows renormalised; a row with no
        mass there becomes uniform over them.
    "prior": label-shift correction (Saerens et al., 2002): t(y|x) proportional to s(y|x) pi(y) / s_bar(y),
        where pi is the client's class frequencies and s_bar the target's mean over the M samples (the class
        prior the senders' predictions carry); classes the client lacks get 0, as with "classes". A row
        with no mass left becomes pi.
    """
    if how not in TARGET_SHIFTS:
        raise ValueError(f"how must be one of {', '.join(TARGET_SHIFTS)}, got {how!r}")
    T, was_numpy = _as_tensor(targets)
    if T.ndim != 2:
        raise ValueError(f"targets must be (M, C), got {tuple(T.shape)}")
    counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64).reshape(-1))
    if counts.shape != (T.shape[1],) or (counts < 0).any() or not counts.sum() > 0:
        raise ValueError(f"class_counts must be {T.shape[1]} non-negative counts, not all zero; got {counts.tolist()}")
    if how == "none":
        return targets
    prior = (counts / counts.sum()).to(T.dtype)
    if how == "classes":
        weights, fallback = (counts > 0).to(T.dtype), (counts > 0).to(T.dtype) / (counts > 0).sum()
    else:
        weights, fallback = prior / T.mean(0).clamp_min(1e-12), prior
    shifted = T * weights
    mass = shifted.sum(1, keepdim=True)
    return _out(torch.where(mass > 0, shifted / mass.clamp_min(1e-30), fallback), was_numpy)


# -----------------------------------------------------------------------------
# the round's alignment subset

def alignment_seed(seed: int, server_round: int) -> int:
    """The seed of round r's alignment subset: the server sends this, never images or index lists."""
    return int(np.random.SeedSequence([int(seed), int(server_round), 0xA11]).generate_state(1)[0])


def alignment_indices(public_size: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` public samples drawn without replacement by a seeded generator."""
    if size >= public_size:
        return np.arange(public_size)
    return np.sort(np.random.default_rng(seed).choice(public_size, size=size, replace=False))


# -----------------------------------------------------------------------------
# FedMD and upload validation

def fedmd_consensus(values, present=None, mode="probs"):
    """FedMD consensus: the mean over present clients of (N, M, C) values -> (M, C).
    mode "probs": the values are soft predictions and their mean is sent (KT-pFL's
    FedMD baseline); mode "logits": the values are logits (original FedMD)."""
    if mode not in ("probs", "logits"):
        raise ValueError(f"mode must be 'probs' or 'logits', got {mode!r}")
    V, was_numpy = _as_tensor(values)
    if V.ndim != 3:
        raise ValueError(f"values must be (N, M, C), got {tuple(V.shape)}")
    mask = _present_mask(present, V.shape[0])
    return _out(V[mask].mean(0), was_numpy)


def check_predictions(array, num_samples, num_classes, kind="probs"):
    """Why an uploaded (num_samples, num_classes) prediction is unacceptable, or None.
    kind "probs": finite, non-negative, rows summing to 1 within 1e-3.
    kind "logits": finite and |value| <= LOGIT_BOUND (1e4)."""
    if kind not in ("probs", "logits"):
        raise ValueError(f"kind must be 'probs' or 'logits', got {kind!r}")
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    try:
        a = np.asarray(array)
    except (ValueError, TypeError) as e:
        return f"not an array: {e}"
    if not np.issubdtype(a.dtype, np.floating):
        return f"dtype {a.dtype} is not a floating-point type (float16, float32 or float64)"
    if a.ndim != 2:
        return f"expected 2 dimensions, got {a.ndim}"
    if a.shape != (num_samples, num_classes):
        return f"expected shape ({num_samples}, {num_classes}), got {a.shape}"
    if not np.isfinite(a).all():
        return "non-finite values (NaN or inf)"
    if kind == "probs":
        if (a < 0).any():
            return "negative probabilities"
        err = np.abs(a.sum(1, dtype=np.float64) - 1.0).max() if a.size else 0.0
        if err > 1e-3:
            return f"rows do not sum to 1 (max error {err:.3g})"
    elif a.size and np.abs(a).max() > LOGIT_BOUND:
        return f"logits beyond +-{LOGIT_BOUND:g}"
    return None
