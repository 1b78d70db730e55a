"""Augmentations against NumPy loops fed the parameters each transform draws; the draws
themselves against their distributions; jit, scan, determinism; parse/describe and errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import augment as A

N, H, W, C, K = 12, 7, 6, 3, 5
KEYS = [jax.random.key(s) for s in (0, 1, 7)]


def batch(n=N, h=H, w=W, c=C, seed=0):
    """Distinct float images in [-1, 1] (0 inside the range) and int labels in [0, K)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, h, w, c)).astype(np.float32)
    return x, rng.integers(0, K, size=n).astype(np.int32)


def onehot(y, k=K):
    return np.eye(k, dtype=np.float32)[y]


# --- NumPy references: loops over examples and pixels --------------------------------------
def np_crop(x, pad, mode, offsets):
    out = np.empty_like(x)
    for i, (oy, ox) in enumerate(np.asarray(offsets)):
        p = np.pad(x[i], ((pad, pad), (pad, pad), (0, 0)),
                   mode="constant" if mode == "zeros" else "reflect")
        out[i] = p[oy:oy + x.shape[1], ox:ox + x.shape[2]]
    return out


def np_flip(x, flags):
    return np.stack([xi[:, ::-1] if f else xi for xi, f in zip(x, np.asarray(flags), strict=True)])


def np_translate(x, shifts):
    out = np.zeros_like(x)
    _, h, w, _ = x.shape
    for i, (dy, dx) in enumerate(np.asarray(shifts)):
        for r in range(h):
            for c in range(w):
                if 0 <= r - dy < h and 0 <= c - dx < w:
                    out[i, r, c] = x[i, r - dy, c - dx]
    return out


def np_cutout(x, size, centres):
    out = x.copy()
    for i, (cy, cx) in enumerate(np.asarray(centres)):
        y0, x0 = cy - size // 2, cx - size // 2
        for r in range(x.shape[1]):
            for c in range(x.shape[2]):
                if y0 <= r < y0 + size and x0 <= c < x0 + size:
                    out[i, r, c] = 0
    return out


def np_mix(x, t, lam, perm):
    lam, perm = float(lam), np.asarray(perm)
    return lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]


def np_cutmix_paste(x, box, perm):
    y0, y1, x0, x1 = np.asarray(box)
    out = x.copy()
    for i, j in enumerate(np.asarray(perm)):
        out[i, y0:y1, x0:x1] = x[j, y0:y1, x0:x1]
    return out


# --- each transform equals its NumPy loop --------------------------------------------------
@pytest.mark.parametrize("pad,mode", [(0, "zeros"), (2, "zeros"), (3, "reflect"),
                                      (8, "reflect")])  # 8 > H: reflects repeatedly, as NumPy
@pytest.mark.parametrize("key", KEYS)
def test_random_crop_matches_numpy(pad, mode, key):
    x, y = batch()
    aug = A.random_crop(pad, mode=mode)
    out, labels = aug(key, x, y)
    np.testing.assert_array_equal(out, np_crop(x, pad, mode, aug.params(key, x.shape)))
    np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("key", KEYS)
def test_random_flip_matches_numpy(key):
    x, y = batch()
    aug = A.random_flip()
    out, labels = aug(key, x, y)
    flags = aug.params(key, x.shape)
    assert 0 < np.sum(flags) < N  # both branches are exercised
    np.testing.assert_array_equal(out, np_flip(x, flags))
    np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("max_shift", [0, 2, 9])
@pytest.mark.parametrize("key", KEYS)
def test_random_translate_matches_numpy(max_shift, key):
    x, y = batch()
    aug = A.random_translate(max_shift)
    out, labels = aug(key, x, y)
    np.testing.assert_array_equal(out, np_translate(x, aug.params(key, x.shape)))
    np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("size", [1, 3, 4, 20])
@pytest.mark.parametrize("key", KEYS)
def test_cutout_matches_numpy(size, key):
    x, y = batch()
    aug = A.cutout(size)
    out, labels = aug(key, x, y)
    np.testing.assert_array_equal(out, np_cutout(x, size, aug.params(key, x.shape)))
    np.testing.assert_array_equal(labels, y)


def test_cutout_erases_a_full_square_away_from_the_border():
    x = np.ones((400, 16, 16, 2), np.float32)
    aug = A.cutout(5)
    out, _ = aug(jax.random.key(3), x, np.zeros(400, np.int32))
    centres = np.asarray(aug.params(jax.random.key(3), x.shape))
    inside = np.all((centres >= 2) & (centres <= 13), axis=1)
    zeros = (np.asarray(out) == 0).all(-1).sum((1, 2))
    assert inside.any() and (zeros[inside] == 25).all() and (zeros <= 25).all()


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("key", KEYS)
def test_mixup_matches_numpy(soft, key):
    x, y = batch()
    t = onehot(y) if not soft else np.random.default_rng(1).dirichlet(np.ones(K), N).astype(
        np.float32)
    aug = A.mixup(0.4, num_classes=K)
    out, targets = aug(key, x, t if soft else y)
    lam, perm = aug.params(key, x.shape)
    want_x, want_t = np_mix(x, t, lam, perm)
    np.testing.assert_allclose(out, want_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(targets, want_t, rtol=1e-6, atol=1e-6)
    assert targets.shape == (N, K) and targets.dtype == jnp.float32


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("key", KEYS)
def test_cutmix_matches_numpy(soft, key):
    x, y = batch(h=16, w=12)
    t = onehot(y) if not soft else np.random.default_rng(2).dirichlet(np.ones(K), N).astype(
        np.float32)
    aug = A.cutmix(1.0, num_classes=K)
    out, targets = aug(key, x, t if soft else y)
    lam, perm, box = aug.params(key, x.shape)
    np.testing.assert_array_equal(out, np_cutmix_paste(x, box, perm))
    y0, y1, x0, x1 = np.asarray(box)
    area = (y1 - y0) * (x1 - x0) / (16 * 12)
    np.testing.assert_allclose(lam, 1 - area, rtol=1e-6)
    np.testing.assert_allclose(targets, np_mix(x, t, lam, perm)[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("key", KEYS)
def test_compose_applies_in_order_with_split_keys(key):
    x, y = batch()
    crop, flip, mix = A.random_crop(2), A.random_flip(), A.mixup(0.5, num_classes=K)
    k1, k2, k3 = jax.random.split(key, 3)
    want = mix(k3, *flip(k2, *crop(k1, x, y)))
    got = A.compose(crop, flip, mix)(key, x, y)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert A.compose(crop) is crop
    assert A.compose(A.compose(crop, flip), mix) == A.compose(crop, flip, mix)
    np.testing.assert_array_equal(A.compose()(key, x, y)[0], x)


# --- the draws follow their distributions --------------------------------------------------
def test_flip_rate_is_p_over_many_examples():
    x, y = batch(n=20000, h=2, w=3, c=1)
    for p in (0.5, 0.2):
        out, _ = A.random_flip(p=p)(jax.random.key(11), x, y)
        flipped = (np.asarray(out) == x[:, :, ::-1]).all((1, 2, 3))
        kept = (np.asarray(out) == x).all((1, 2, 3))
        assert (flipped ^ kept).all()
        assert abs(flipped.mean() - p) < 4 * math.sqrt(p * (1 - p) / len(x))


def _assert_uniform_ints(values, low, high):
    """Every integer in [low, high] drawn, each about equally often (within 5 sigma)."""
    values = np.asarray(values).ravel()
    counts = np.bincount(values - low, minlength=high - low + 1)
    assert values.min() == low and values.max() == high and len(counts) == high - low + 1
    p = 1 / len(counts)
    assert np.all(np.abs(counts / len(values) - p) < 5 * math.sqrt(p * (1 - p) / len(values)))


def test_crop_offsets_cover_zero_to_two_pad_uniformly():
    offsets = np.asarray(A.random_crop(4).params(jax.random.key(5), (20000, 8, 8, 1)))
    _assert_uniform_ints(offsets[:, 0], 0, 8)
    _assert_uniform_ints(offsets[:, 1], 0, 8)
    assert abs(np.corrcoef(offsets[:, 0], offsets[:, 1])[0, 1]) < 0.05  # rows, columns apart


def test_translate_shifts_and_cutout_centres_cover_their_ranges():
    shifts = np.asarray(A.random_translate(3).params(jax.random.key(6), (20000, 8, 8, 1)))
    _assert_uniform_ints(shifts, -3, 3)
    centres = np.asarray(A.cutout(4).params(jax.random.key(6), (20000, 5, 9, 1)))
    _assert_uniform_ints(centres[:, 0], 0, 4)
    _assert_uniform_ints(centres[:, 1], 0, 8)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_lam_is_beta_alpha_alpha_and_perm_a_permutation(alpha):
    aug = A.mixup(alpha, num_classes=K)
    keys = jax.random.split(jax.random.key(8), 5000)
    lam, perm = jax.jit(jax.vmap(lambda k: aug.params(k, (N, 1, 1, 1))))(keys)
    lam = np.asarray(lam)
    var = 1 / (4 * (2 * alpha + 1))  # of Beta(alpha, alpha), whose mean is 1/2
    assert abs(lam.mean() - 0.5) < 5 * math.sqrt(var / len(lam))
    assert abs(lam.var() - var) < 0.1 * var
    assert ((lam >= 0) & (lam <= 1)).all()
    np.testing.assert_array_equal(np.sort(np.asarray(perm), axis=1),
                                  np.broadcast_to(np.arange(N), perm.shape))


def test_cutmix_pasted_fraction_matches_a_numpy_simulation():
    """The distribution of 1 - lam against Yun et al.'s box sampling, simulated in NumPy."""
    h, w, n = 16, 12, 20000
    aug = A.cutmix(1.0, num_classes=K)
    keys = jax.random.split(jax.random.key(9), n)
    lam = np.asarray(jax.jit(jax.vmap(lambda k: aug.params(k, (4, h, w, 1)).lam))(keys))
    rng = np.random.default_rng(0)
    beta = rng.beta(1.0, 1.0, n)
    cut_h, cut_w = (np.floor(h * np.sqrt(1 - beta)).astype(int),
                    np.floor(w * np.sqrt(1 - beta)).astype(int))
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
    area = ((np.clip(cy + cut_h // 2, 0, h) - np.clip(cy - cut_h // 2, 0, h))
            * (np.clip(cx + cut_w // 2, 0, w) - np.clip(cx - cut_w // 2, 0, w)))
    want = 1 - area / (h * w)
    assert abs(lam.mean() - want.mean()) < 5 * want.std() / math.sqrt(n)
    np.testing.assert_allclose(np.quantile(lam, [0.1, 0.5, 0.9]),
                               np.quantile(want, [0.1, 0.5, 0.9]), atol=0.03)


# --- shapes, dtypes and ranges -------------------------------------------------------------
GEOMETRIC = [A.random_crop(3), A.random_crop(2, mode="reflect"), A.random_flip(),
             A.random_translate(2), A.cutout(3)]


@pytest.mark.parametrize("aug", GEOMETRIC, ids=A.describe)
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.uint8])
def test_geometric_keep_shape_dtype_labels_and_take_values_from_the_input_or_zero(aug, dtype):
    x = np.random.default_rng(3).integers(1, 200, size=(N, H, W, C)).astype(dtype)
    soft = np.random.default_rng(3).uniform(size=(N, K)).astype(np.float32)
    for labels in (np.arange(N), soft):
        out, got = aug(jax.random.key(4), x, labels)
        assert out.shape == x.shape and out.dtype == x.dtype
        np.testing.assert_array_equal(got, labels)
        values = set(np.asarray(out, np.float32).ravel())
        assert values <= set(np.asarray(x, np.float32).ravel()) | {0.0}
        assert float(np.asarray(out, np.float32).max()) <= float(np.asarray(x, np.float32).max())


def test_reflect_crop_stays_within_the_input_range():
    x = np.random.default_rng(4).uniform(2, 3, size=(N, H, W, C)).astype(np.float32)
    out, _ = A.random_crop(4, mode="reflect")(jax.random.key(0), x, np.zeros(N, np.int32))
    assert x.min() <= np.min(out) and np.max(out) <= x.max()


@pytest.mark.parametrize("aug", [A.mixup(0.3, num_classes=K), A.cutmix(0.7, num_classes=K)],
                         ids=A.describe)
def test_mixing_gives_convex_combinations_and_targets_that_sum_to_one(aug):
    x, y = batch()
    for key in KEYS:
        out, t = aug(key, x, y)
        perm = np.asarray(aug.params(key, x.shape).perm)
        assert out.shape == x.shape and out.dtype == x.dtype and t.shape == (N, K)
        lo, hi = np.minimum(x, x[perm]), np.maximum(x, x[perm])
        assert np.all((lo - 1e-6 <= np.asarray(out)) & (np.asarray(out) <= hi + 1e-6))
        np.testing.assert_allclose(np.sum(t, axis=1), 1, rtol=1e-6)
        assert np.all(np.asarray(t) >= 0)


def test_cutmix_lam_is_the_fraction_of_pixels_from_the_partner():
    h, w = 10, 8
    x = np.broadcast_to(np.arange(N, dtype=np.float32)[:, None, None, None],
                        (N, h, w, 1)).copy()  # image i is the constant i
    aug = A.cutmix(1.0, num_classes=N)
    checked = 0
    for s in range(20):
        key = jax.random.key(100 + s)
        out, t = aug(key, x, np.arange(N))
        perm = np.asarray(aug.params(key, x.shape).perm)
        for i in np.flatnonzero(perm != np.arange(N)):
            pasted = np.mean(np.asarray(out)[i] == perm[i])
            np.testing.assert_allclose(t[i, perm[i]], pasted, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(t[i, i], 1 - pasted, rtol=1e-6, atol=1e-7)
            checked += 1
    assert checked > 100


# --- determinism, jit, scan ----------------------------------------------------------------
ALL = GEOMETRIC + [A.mixup(0.2, num_classes=K), A.cutmix(1.0, num_classes=K),
                   A.parse("crop:2:reflect,flip,translate:1,cutout:3,mixup:0.4", num_classes=K)]


@pytest.mark.parametrize("aug", ALL, ids=A.describe)
def test_deterministic_per_key_different_across_keys_and_same_under_jit(aug):
    x, y = batch()
    a = aug(jax.random.key(0), x, y)
    b = aug(jax.random.key(0), x, y)
    c = aug(jax.random.key(1), x, y)
    j = jax.jit(aug)(jax.random.key(0), x, y)
    legacy = aug(jax.random.PRNGKey(0), x, y)  # raw uint32 keys work too
    assert legacy[0].shape == x.shape
    for u, v, z in zip(a, b, j, strict=True):
        np.testing.assert_array_equal(u, v)
        np.testing.assert_allclose(u, z, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(a[0], c[0])


def test_transforms_are_hashable_static_arguments_of_jit():
    x, y = batch()

    @jax.jit
    def run(key, x, y):
        return apply(ALL[-1], key, x, y)

    apply = jax.jit(lambda aug, key, x, y: aug(key, x, y), static_argnums=0)
    assert len({hash(a) for a in ALL}) == len(ALL)
    np.testing.assert_allclose(run(jax.random.key(2), x, y)[1],
                               jax.jit(ALL[-1])(jax.random.key(2), x, y)[1], rtol=1e-6)


def test_inside_lax_scan_over_batches_equals_a_python_loop():
    aug = A.parse("crop:4:reflect,flip,translate:2,cutout:4,cutmix:1.0", num_classes=K)
    xs = np.stack([batch(seed=s)[0] for s in range(4)])
    ys = np.stack([batch(seed=s)[1] for s in range(4)])

    def step(key, xy):
        key, sub = jax.random.split(key)
        return key, aug(sub, *xy)

    _, (sx, st) = jax.jit(lambda k: jax.lax.scan(step, k, (xs, ys)))(jax.random.key(3))
    key, once = jax.random.key(3), jax.jit(aug)
    for i in range(4):
        key, sub = jax.random.split(key)
        want_x, want_t = once(sub, xs[i], ys[i])
        np.testing.assert_allclose(sx[i], want_x, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(st[i], want_t, rtol=1e-6, atol=1e-6)


# --- parse and describe --------------------------------------------------------------------
@pytest.mark.parametrize("spec,canonical", [
    ("crop:4,flip", "crop:4,flip"),
    ("crop:4:reflect, flip, cutout:8", "crop:4:reflect,flip,cutout:8"),
    ("crop,flip:0.25,translate:3", "crop:4,flip:0.25,translate:3"),
    ("crop:2:zeros", "crop:2"),
    ("mixup", "mixup:0.2"), ("mixup:0.4", "mixup:0.4"), ("cutmix", "cutmix:1.0"),
    ("crop:4,flip,cutmix:0.5", "crop:4,flip,cutmix:0.5"),
])
def test_parse_describe_round_trip(spec, canonical):
    aug = A.parse(spec, num_classes=10)
    assert A.describe(aug) == canonical
    assert A.parse(A.describe(aug), num_classes=10) == aug


def test_parse_builds_the_named_transforms():
    assert A.parse("crop:4:reflect,flip,cutout:8") == A.compose(
        A.random_crop(4, mode="reflect"), A.random_flip(), A.cutout(8))
    assert A.parse("mixup:0.2", num_classes=10) == A.mixup(0.2, num_classes=10)
    assert A.parse("") is None and A.parse("  ") is None and A.describe(None) == ""
    for aug in [A.random_crop(3, mode="reflect"), A.random_flip(p=0.1), A.cutout(2),
                A.compose(A.random_translate(1), A.cutmix(0.3, num_classes=10))]:
        assert A.parse(A.describe(aug), num_classes=10) == aug
        assert repr(aug).startswith(type(aug).__name__ + "(")


HELP = r"valid names: crop, flip, translate, cutout, mixup, cutmix; syntax: crop\[:PAD"


@pytest.mark.parametrize("spec,message", [
    ("crop:4,rotate", r"augmentation spec 'crop:4,rotate': unknown augmentation 'rotate'; "),
    ("crop:4,,flip", r"unknown augmentation ''"),
    ("crop:x", r"augmentation spec 'crop:x': PAD must be an integer, got 'x'; "),
    ("crop:-1", r"'crop:-1': random_crop: pad must be an integer >= 0, got -1; "),
    ("crop:4:wrap", r"random_crop: mode must be 'zeros' or 'reflect', got 'wrap'"),
    ("crop:1:zeros:2", r"'crop:1:zeros:2': takes 0 to 2 parameter\(s\), got 3"),
    ("flip,translate", r"'flip,translate': 'translate': takes 1 parameter\(s\), got 0"),
    ("cutout:0", r"cutout: size must be an integer >= 1, got 0"),
    ("flip:1.5", r"random_flip: p must be a probability in \[0, 1\], got 1.5"),
    ("mixup:0", r"mixup: alpha must be a finite number > 0, got 0.0"),
    ("cutmix:-1", r"cutmix: alpha must be a finite number > 0, got -1.0"),
    ("mixup:abc", r"ALPHA must be a number, got 'abc'"),
])
def test_parse_errors_name_the_item_and_list_the_syntax(spec, message):
    with pytest.raises(ValueError, match=message + ".*" + HELP):
        A.parse(spec, num_classes=10)


def test_parse_mixup_needs_num_classes_and_describe_refuses_foreign_callables():
    with pytest.raises(ValueError, match=r"'crop,mixup': 'mixup': needs num_classes: call "
                                         r"parse\(spec, num_classes=K\)"):
        A.parse("crop,mixup")
    with pytest.raises(ValueError, match=r"describe: .* is not a jaxcnn.augment transform"):
        A.describe(lambda key, x, y: (x, y))


# --- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("make,message", [
    (lambda: A.random_crop(-1), r"random_crop: pad must be an integer >= 0, got -1"),
    (lambda: A.random_crop(2.5), r"random_crop: pad must be an integer >= 0, got 2.5"),
    (lambda: A.random_crop(4, mode="edge"),
     r"random_crop: mode must be 'zeros' or 'reflect', got 'edge'"),
    (lambda: A.random_flip(p=-0.1), r"random_flip: p must be a probability in \[0, 1\]"),
    (lambda: A.random_translate(-2), r"random_translate: max_shift must be an integer >= 0, "
                                     r"got -2"),
    (lambda: A.cutout(0), r"cutout: size must be an integer >= 1, got 0"),
    (lambda: A.mixup(0.0, num_classes=3), r"mixup: alpha must be a finite number > 0, got 0.0"),
    (lambda: A.mixup(-1, num_classes=3), r"mixup: alpha must be a finite number > 0, got -1"),
    (lambda: A.cutmix(float("nan")), r"cutmix: alpha must be a finite number > 0, got nan"),
    (lambda: A.mixup(0.2, num_classes=0), r"mixup: num_classes must be an integer >= 1, got 0"),
    (lambda: A.compose(A.random_flip(), 3), r"compose: every argument must be an "
                                            r"augmentation aug\(key, images, labels\), got 3"),
])
def test_configuration_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("aug,name", [(A.random_crop(2), "random_crop"),
                                      (A.random_flip(), "random_flip"),
                                      (A.random_translate(1), "random_translate"),
                                      (A.cutout(2), "cutout"),
                                      (A.mixup(0.2, num_classes=K), "mixup"),
                                      (A.cutmix(1.0, num_classes=K), "cutmix")])
def test_input_errors_name_the_transform_and_the_shape(aug, name):
    x, y = batch()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=rf"{name}: images must be 4-D \(N, H, W, C\), got "
                                         rf"shape \({H}, {W}, {C}\)"):
        aug(key, x[0], y)
    with pytest.raises(ValueError, match=rf"{name}: labels must have leading size {N} \(one "
                                         rf"per image of \({N}, {H}, {W}, {C}\)\), got shape "
                                         rf"\({N - 1},\)"):
        aug(key, x, y[1:])
    with pytest.raises(ValueError, match=rf"{name}: labels must have leading size {N}"):
        aug(key, x, np.int32(3))


def test_mixing_errors_name_the_labels_and_images():
    x, y = batch()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"mixup: integer labels need num_classes to become "
                                         r"one-hot targets; pass mixup\(..., num_classes=K\)"):
        A.mixup(0.2)(key, x, y)
    with pytest.raises(ValueError, match=r"cutmix: soft targets must have 5 columns "
                                         r"\(num_classes\), got shape \(12, 4\)"):
        A.cutmix(num_classes=K)(key, x, np.ones((N, 4), np.float32) / 4)
    with pytest.raises(ValueError, match=r"mixup: labels must be \(N,\) int class indices or "
                                         r"\(N, K\) float targets, got float32 of shape \(12,\)"):
        A.mixup(num_classes=K)(key, x, y.astype(np.float32))
    with pytest.raises(ValueError, match=r"cutmix: images must be float to be mixed, got uint8"):
        A.cutmix(num_classes=K)(key, x.astype(np.uint8), y)
    # soft targets need no num_classes
    out, t = A.mixup(0.2)(key, x, onehot(y))
    assert t.shape == (N, K)


def test_params_needs_the_image_shape_where_it_draws_positions():
    with pytest.raises(ValueError, match=r"cutout: params needs the images' shape "
                                         r"\(N, H, W, C\), got 8"):
        A.cutout(2).params(jax.random.key(0), 8)
    assert A.random_crop(2).params(jax.random.key(0), 8).shape == (8, 2)
