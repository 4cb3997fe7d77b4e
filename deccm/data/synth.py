"""Feature-level synthetic benchmark with a planted confounder and a known truth.

The generative story (the one DecCM's causal graph assumes, ``docs/method.md`` §1):

* ``G`` genre groups with Zipf-like popularity ``π_g ∝ (g+1)^-s``; every track has a
  genre, a content latent ``z_m`` (partly genre-dependent: genres do differ in what they
  fit) and an audible genre "style" latent that does not enter the affinity.
* Videos have a content latent ``z_v`` and a nuisance latent (lighting, camera, ...).
  With ``taste_video = s > 0`` the uploader's taste also shapes the video: the nuisance
  latent of an uploaded video is shifted by ``s·(d_u − π)·P`` (``P`` a fixed random
  G × nuisance map), as people who like a genre share a visual style. That opens the
  backdoor ``V ← D → M``: video features now predict the uploader's genre bias, and a
  matcher fitted to the logs learns it. ``CONFOUNDING`` names s = 0 / 3 / 8 (none,
  moderate, strong); with ``gamma = 0`` the same world logs unconfounded choices (the
  ceiling twin of ``benchmarks/debias.py``). PGC segments have no uploader, no shift.
* With ``taste_content = t > 0`` the taste also acts through *content* (the mediated path
  D → V_content → M): an uploaded video's content latent is pulled by ``t·(d_u − π)·C Wᵀ``
  toward the content that fits the uploader's favoured genres (``C`` the genres' music
  centres), and the true affinity is computed from the pulled latent. A hip-hop fan films
  street dance, and street dance really does fit hip-hop. ``MEDIATED`` names t = 0 / 3 / 8.
  Both knobs at 0 give the original data byte for byte (neither draws random numbers).
* True affinity ``a(v, m) = (z_v W) · z_m / sqrt(k)`` with a fixed orthogonal ``W``
  (unit variance), stored under ``truth/`` so any metric can be checked against it.
* Uploaders carry a genre preference ``d_u ~ Dirichlet(c·G·π)``, skewed toward popular
  genres: **the confounder**. A logged (UGC) row draws its track from
  ``P(m | v, u) ∝ exp(β·a(v, m)) · d_u[genre(m)]^γ``, so the logs over-represent the
  uploaders' and the popular genres.
* PGC pairs (professionally edited) draw from ``exp(β_pgc·a)`` alone: no uploader bias.
* ``test`` is drawn like training (biased); ``test_oracle`` uses the *same videos* with
  positives drawn from the affinity alone: what an unbiased matcher should retrieve.
* ``gate`` (``n_gate`` clips, the size of ``val`` in the presets) is logged like ``val``
  on clips of its own, drawn from a separate random stream after everything else, so the
  other splits are the same as without it; the promotion gate scores on it.
* Features are fixed random non-linear maps of the latents plus noise, at the method's
  dims: video 2048 (non-negative like pooled ResNet activations), music 128 embedding +
  128 standardised descriptors (like VGGish ‖ normalised openSMILE).

Row-level side information follows the authors' columns: ``prior`` is the uploader's
genre distribution estimated *leave-one-out* from their other training rows (smoothed
toward the global genre share, so it carries no label of its own row, §9.13);
``propensity`` is that prior's mass on the chosen track's genre; ``video_genre`` marks
the genres whose best track fits the video nearly best; val/test weights are inverse
popularity ``1/(n(m)+1)`` from training positives only, normalised to sum to 1. The
formulas live in ``deccm.data.protocol``, shared with the demo corpus and user data.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from deccm.data import protocol
from deccm.data.format import N_NEGATIVES, PGC, UGC, PairRows, RankRows, Truth, write_dataset

log = logging.getLogger(__name__)

GENRES = ("pop", "electronic", "hip-hop", "rock", "folk", "classical")  # most → least popular
CHUNK = 4096


@dataclass(frozen=True)
class SynthConfig:
    n_tracks: int
    n_train: int
    n_val: int
    n_test: int
    n_uploaders: int
    n_pgc: int
    video_dim: int = 2048
    music_embed_dim: int = 128
    music_desc_dim: int = 128
    latent_dim: int = 16  # k: content latent size
    nuisance_dim: int = 8  # video latent that no music depends on
    style_dim: int = 8  # audible genre cue of a track, outside the affinity
    zipf_s: float = 1.0  # genre popularity exponent
    catalog_s: float = 0.3  # genre share of the catalog (milder than popularity)
    genre_coupling: float = 0.4  # how much a track's content latent depends on its genre
    uploader_concentration: float = 1.0  # Dirichlet(c·G·π): small = strong individual taste
    beta: float = 3.0  # affinity sharpness of logged choices
    gamma: float = 1.5  # confounder strength on the logged choice (0 = no uploader bias)
    taste_video: float = 0.0  # s: how far the uploader's taste shifts the video's nuisance latent (0 = no backdoor)
    taste_content: float = 0.0  # t: how far the uploader's taste pulls the video's *content* latent toward its genres (0 = none)
    beta_pgc: float = 4.0  # professionals match more sharply
    feature_noise: float = 0.3
    prior_smoothing: float = 1.0
    pgc_val_fraction: float = 0.1
    n_gate: int = 0  # clips of the ``gate`` split (0 = none); drawn from their own stream, after everything else
    seed: int = 0


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(n_tracks=160, n_train=400, n_val=100, n_test=100, n_uploaders=40, n_pgc=300, n_gate=100),
    # the CPU benchmark world (docs/results.md): small's catalog, a third of its rows
    "reduced": SynthConfig(n_tracks=1000, n_train=6000, n_val=600, n_test=1500, n_uploaders=500, n_pgc=3000, n_gate=600),
    "small": SynthConfig(n_tracks=1000, n_train=20000, n_val=2000, n_test=2000, n_uploaders=1500, n_pgc=8000, n_gate=2000),
    "tt150k": SynthConfig(n_tracks=3003, n_train=120000, n_val=15000, n_test=15000, n_uploaders=10000, n_pgc=40000,
                          n_gate=15000),
}
# named strengths of the taste → video path (SynthConfig.taste_video)
CONFOUNDING: dict[str, float] = {"none": 0.0, "moderate": 3.0, "strong": 8.0}
# named strengths of the mediated path taste → content → music (SynthConfig.taste_content)
MEDIATED: dict[str, float] = {"none": 0.0, "moderate": 3.0, "strong": 8.0}


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


class _World:
    """The latent world: genres, tracks, videos, uploaders and the fixed feature maps."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        g, k = len(GENRES), cfg.latent_dim
        rng = np.random.default_rng(cfg.seed)
        self.rng = rng
        self.popularity = (np.arange(1, g + 1) ** -cfg.zipf_s).astype(np.float64)
        self.popularity /= self.popularity.sum()
        catalog = np.arange(1, g + 1) ** -cfg.catalog_s
        self.track_genre = rng.choice(g, size=cfg.n_tracks, p=catalog / catalog.sum()).astype(np.int64)
        centroid = rng.standard_normal((g, k))
        self.genre_centre = centroid  # (G, k) music-content centre of each genre
        c = cfg.genre_coupling
        self.music_content = (c * centroid[self.track_genre] + np.sqrt(1 - c * c) * rng.standard_normal((cfg.n_tracks, k))).astype(np.float32)
        style = rng.standard_normal((g, cfg.style_dim))
        self.music_style = (style[self.track_genre] + 0.3 * rng.standard_normal((cfg.n_tracks, cfg.style_dim))).astype(np.float32)
        self.W = _orthogonal(rng, k)
        self.uploader_pref = rng.dirichlet(cfg.uploader_concentration * g * self.popularity, size=cfg.n_uploaders).astype(np.float64)
        self.uploader_pref = np.clip(self.uploader_pref, 1e-6, None)
        self.uploader_pref /= self.uploader_pref.sum(axis=1, keepdims=True)
        # fixed feature maps (a separate stream, so sizes do not change the maps)
        mrng = np.random.default_rng([cfg.seed, 1])
        vin, min_ = k + cfg.nuisance_dim, k + cfg.style_dim
        self.Wv = (mrng.standard_normal((vin, cfg.video_dim)) / np.sqrt(vin)).astype(np.float32)
        self.bv = (0.5 * mrng.standard_normal(cfg.video_dim)).astype(np.float32)
        self.We = (mrng.standard_normal((min_, cfg.music_embed_dim)) / np.sqrt(min_)).astype(np.float32)
        self.Wd1 = (mrng.standard_normal((min_, cfg.music_desc_dim)) / np.sqrt(min_)).astype(np.float32)
        self.Wd2 = (mrng.standard_normal((min_, cfg.music_desc_dim)) / np.sqrt(min_)).astype(np.float32)
        # P: taste → visual style (its own stream: s = 0 gives the same data as before the knob)
        self.taste_map = np.random.default_rng([cfg.seed, 2]).standard_normal((g, cfg.nuisance_dim)).astype(np.float32)

    def taste_shift(self, uploader: np.ndarray) -> np.ndarray | None:
        """(N, nuisance) shift s·(d_u − π)·P of each uploaded video's nuisance latent; None when s = 0."""
        if not self.cfg.taste_video:
            return None
        return (self.cfg.taste_video * (self.uploader_pref[uploader] - self.popularity) @ self.taste_map).astype(np.float32)

    def taste_pull(self, zv: np.ndarray, uploader: np.ndarray) -> np.ndarray:
        """``zv`` moved by t·(d_u − π)·C Wᵀ: toward the content that fits the uploader's favoured genres.

        C holds the genres' music-content centres, so Wᵀ maps them to the video latent that
        fits them best (``affinity`` is (z_v W)·z_m): a hip-hop fan films what hip-hop fits.
        The pull is genuine content, so the true affinity changes with it. t = 0 returns ``zv``.
        """
        if not self.cfg.taste_content:
            return zv
        centre_v = self.genre_centre @ self.W.T / np.sqrt(self.cfg.latent_dim)  # (G, k), rows of unit scale
        return (zv + self.cfg.taste_content * (self.uploader_pref[uploader] - self.popularity) @ centre_v).astype(np.float32)

    def affinity(self, zv: np.ndarray) -> np.ndarray:
        """(N, k) video content latents → (N, M) true affinity to every track."""
        return (zv @ self.W) @ self.music_content.T / np.sqrt(self.cfg.latent_dim)

    def video_features(self, zv: np.ndarray, desc: str, shift: np.ndarray | None = None) -> np.ndarray:
        """(N, video_dim) features of content latents ``zv``; ``shift`` (N, nuisance) moves the nuisance latent."""
        cfg, rng = self.cfg, self.rng
        out = np.empty((len(zv), cfg.video_dim), dtype=np.float32)
        for s in tqdm(range(0, len(zv), CHUNK), desc=desc, unit="chunk", leave=False):
            nuisance = rng.standard_normal((len(zv[s:s + CHUNK]), cfg.nuisance_dim)).astype(np.float32)
            if shift is not None:
                nuisance += shift[s:s + CHUNK]
            z = np.concatenate([zv[s:s + CHUNK], nuisance], axis=1)
            h = np.maximum(z @ self.Wv + self.bv, 0)
            h += cfg.feature_noise * rng.standard_normal(h.shape, dtype=np.float32)
            out[s:s + CHUNK] = np.maximum(h, 0)  # pooled CNN activations are non-negative
        return out

    def music_features(self) -> np.ndarray:
        cfg, rng = self.cfg, self.rng
        z = np.concatenate([self.music_content, self.music_style], axis=1)
        emb = np.tanh(z @ self.We) + cfg.feature_noise * rng.standard_normal((len(z), cfg.music_embed_dim))
        desc = (z @ self.Wd1) * np.tanh(z @ self.Wd2) + cfg.feature_noise * rng.standard_normal((len(z), cfg.music_desc_dim))
        desc = (desc - desc.mean(axis=0)) / (desc.std(axis=0) + 1e-8)  # fitted on the catalog, like *_norm.npy
        return np.concatenate([emb, desc], axis=1).astype(np.float32)

    def draw(self, zv: np.ndarray, uploader: np.ndarray | None, beta: float, gamma: float, desc: str) -> tuple[np.ndarray, np.ndarray]:
        """Gumbel-max draw of one track per video; returns (tracks, multi-hot video genre)."""
        g = len(GENRES)
        picks = np.empty(len(zv), dtype=np.int64)
        vgenre = np.zeros((len(zv), g), dtype=np.uint8)
        onehot = np.eye(g, dtype=bool)[self.track_genre]  # (M, G)
        for s in tqdm(range(0, len(zv), CHUNK), desc=desc, unit="chunk", leave=False):
            a = self.affinity(zv[s:s + CHUNK])  # (n, M)
            logits = beta * a
            if uploader is not None and gamma:
                logits = logits + gamma * np.log(self.uploader_pref[uploader[s:s + CHUNK]][:, self.track_genre])
            picks[s:s + CHUNK] = np.argmax(logits + self.rng.gumbel(size=logits.shape), axis=1)
            best = np.stack([np.where(onehot[:, j], a, -np.inf).max(axis=1) for j in range(g)], axis=1)  # (n, G)
            vgenre[s:s + CHUNK] = best >= best.max(axis=1, keepdims=True) - 0.1
        return picks, vgenre


def generate(cfg: SynthConfig) -> dict[str, Any]:
    """Build every part of a synthetic dataset in memory (chunked where it is large)."""
    if cfg.n_tracks <= N_NEGATIVES:
        raise ValueError(f"n_tracks must exceed {N_NEGATIVES} to sample {N_NEGATIVES} negatives")
    w = _World(cfg)
    rng, g, k = w.rng, len(GENRES), cfg.latent_dim
    n_rank = cfg.n_val + cfg.n_test
    n_videos = cfg.n_train + n_rank
    zv = rng.standard_normal((n_videos, k)).astype(np.float32)
    activity = rng.lognormal(0.0, 1.0, cfg.n_uploaders)
    uploader = rng.choice(cfg.n_uploaders, size=n_videos, p=activity / activity.sum()).astype(np.int64)
    zv = w.taste_pull(zv, uploader)  # no random draws: t = 0 leaves every stream as before
    log.info("drawing logged (biased) choices for %d videos", n_videos)
    biased, vgenre = w.draw(zv, uploader, cfg.beta, cfg.gamma, "biased choices")
    test_ids = np.arange(cfg.n_train + cfg.n_val, n_videos)
    oracle, _ = w.draw(zv[test_ids], None, cfg.beta, 0.0, "oracle choices")

    tr = np.arange(cfg.n_train)
    train = protocol.train_rows(tr, biased[tr], vgenre[tr], w.track_genre, g, uploader=uploader[tr],
                                n_uploaders=cfg.n_uploaders, alpha=cfg.prior_smoothing)

    def rank_rows(ids: np.ndarray, positives: np.ndarray) -> RankRows:
        return protocol.rank_rows(rng, ids, positives, train, w.track_genre, g, uploader=uploader[ids],
                                  n_uploaders=cfg.n_uploaders, alpha=cfg.prior_smoothing)

    val_ids = np.arange(cfg.n_train, cfg.n_train + cfg.n_val)
    ugc = UGC(
        video_features=w.video_features(zv, "video features", w.taste_shift(uploader)),
        music_features=w.music_features(),
        prior_mean=protocol.prior_mean(train.prior),
        music_genre=w.track_genre,
        train=train,
        val=rank_rows(val_ids, biased[val_ids]),
        test=rank_rows(test_ids, biased[test_ids]),
        test_oracle=rank_rows(test_ids, oracle),
    )

    log.info("drawing %d professional (PGC) pairs", cfg.n_pgc)
    zs = rng.standard_normal((cfg.n_pgc, k)).astype(np.float32)
    seg_music, _ = w.draw(zs, None, cfg.beta_pgc, 0.0, "PGC pairs")
    n_pval = max(1, int(round(cfg.n_pgc * cfg.pgc_val_fraction)))
    seg = np.arange(cfg.n_pgc)
    pgc = PGC(
        segment_features=w.video_features(zs, "segment features"),
        music_features=ugc.music_features,
        train=PairRows(segment=seg[n_pval:], music=seg_music[n_pval:]),
        val=PairRows(segment=seg[:n_pval], music=seg_music[:n_pval]),
    )
    if cfg.n_gate:
        ugc, zv = _with_gate(w, ugc, zv, activity)
    truth = Truth(video_content=zv, music_content=w.music_content, affinity_map=w.W,
                  uploader_preference=w.uploader_pref.astype(np.float32), genre_popularity=w.popularity.astype(np.float32))
    tracks = [{"id": i, "title": f"synthetic track {i}", "artist": "deccm synth", "genre": GENRES[w.track_genre[i]],
               "source": "deccm.data.synth", "licence": "CC0 (generated)"} for i in range(cfg.n_tracks)]
    return {"ugc": ugc, "pgc": pgc, "truth": truth, "tracks": tracks}


def _with_gate(w: _World, ugc: UGC, zv: np.ndarray, activity: np.ndarray) -> tuple[UGC, np.ndarray]:
    """``ugc`` with a ``gate`` split of ``n_gate`` new clips appended (ids after every other video), and ``zv`` extended.

    The gate's clips, uploaders, logged picks, features and negatives come from a stream
    of their own (seed ``[seed, 3]``) drawn after everything else, so train/val/test and
    PGC are byte-identical to a dataset without the split: runs trained before it existed
    stay comparable. Rows are logged like ``val`` (biased by the uploader's taste).
    """
    cfg = w.cfg
    w.rng = rng = np.random.default_rng([cfg.seed, 3])
    zg = rng.standard_normal((cfg.n_gate, cfg.latent_dim)).astype(np.float32)
    up = rng.choice(cfg.n_uploaders, size=cfg.n_gate, p=activity / activity.sum()).astype(np.int64)
    zg = w.taste_pull(zg, up)
    log.info("drawing %d gate clips", cfg.n_gate)
    picks, _ = w.draw(zg, up, cfg.beta, cfg.gamma, "gate choices")
    feats = w.video_features(zg, "gate features", w.taste_shift(up))
    ids = np.arange(len(zv), len(zv) + cfg.n_gate)
    gate = protocol.rank_rows(rng, ids, picks, ugc.train, w.track_genre, len(GENRES), uploader=up,
                              n_uploaders=cfg.n_uploaders, alpha=cfg.prior_smoothing)
    features = np.concatenate([ugc.video_features, feats], axis=0)
    return replace(ugc, video_features=features, gate=gate), np.concatenate([zv, zg], axis=0)


def synth(dest: str | Path, preset: str = "small", seed: int = 0, overwrite: bool = False, **overrides: Any) -> Path:
    """Generate the ``preset`` benchmark with ``seed`` and write it atomically to ``dest``.

    ``overrides`` replace :class:`SynthConfig` fields, e.g. ``taste_video=CONFOUNDING["strong"]``
    or ``gamma=0`` (unconfounded logs).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    unknown = set(overrides) - {f for f in SynthConfig.__dataclass_fields__ if f != "seed"}
    if unknown:
        raise ValueError(f"unknown synth setting(s) {sorted(unknown)}; choose from the fields of deccm.data.synth.SynthConfig")
    cfg = replace(PRESETS[preset], seed=seed, **overrides)
    parts = generate(cfg)
    manifest = {
        "name": f"synth-{preset}-seed{seed}",
        "provenance": "synthetic",
        "description": (
            "SYNTHETIC feature-level benchmark generated by deccm.data.synth: features are random "
            "non-linear maps of latent variables, not extracted from any media. Logged choices carry a "
            "planted uploader genre-preference confounder; test_oracle is drawn from the true affinity alone."
            + (f" Uploaders' taste also shifts their videos' visual style (taste_video={cfg.taste_video:g}): a "
               "backdoor path video <- taste -> music." if cfg.taste_video else "")
            + (f" Uploaders' taste also pulls their videos' content toward their genres (taste_content={cfg.taste_content:g}): "
               "a mediated path taste -> content -> music that is real content." if cfg.taste_content else "")
            + (" gamma=0: the logged choices carry no uploader bias (the unconfounded twin)." if not cfg.gamma else "")
        ),
        "genres": list(GENRES),
        "dims": {"music_blocks": [{"name": "embedding", "dim": cfg.music_embed_dim},
                                  {"name": "descriptor", "dim": cfg.music_desc_dim}]},
        # taste_content is recorded only when set, so t = 0 writes the manifest of before the knob, byte for byte
        "generator": {"module": "deccm.data.synth", "preset": preset,
                      **{k: v for k, v in asdict(cfg).items() if k != "taste_content" or v}},
        **protocol.NOTES,
    }
    return write_dataset(dest, manifest, overwrite=overwrite, **parts)
