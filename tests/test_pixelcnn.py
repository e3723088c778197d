"""PixelCNN: the autoregressive property by gradients, normalisation by enumeration, sampler against density."""

import itertools

import pytest
import torch

from genzoo.errors import ConfigError
from genzoo.models.pixelcnn import PixelCNN, PixelCNNConfig
from genzoo.nets.pixelcnn import GatedPixelCNN


def tiny(head="bernoulli", shape=(1, 2, 2), **kw):
    cfg = PixelCNNConfig(head=head, channels=8, layers=3, kernel=3, head_channels=16, **kw)
    model = PixelCNN(cfg, shape).double()
    for p in model.parameters():  # larger weights than the default init, so the conditionals differ visibly
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.mark.parametrize("out_channels", [1, 256])
def test_output_depends_on_every_earlier_pixel_and_on_no_other(out_channels):
    torch.manual_seed(1)
    net = GatedPixelCNN(1, out_channels, channels=8, layers=5, kernel=3, head_channels=16).double()
    h = w = 8
    x = torch.randn(1, 1, h, w, dtype=torch.float64, requires_grad=True)
    out = net(x)
    for i, j in itertools.product(range(h), range(w)):
        (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
        grad = grad.abs().flatten()
        p = i * w + j
        assert grad[p:].max() == 0, f"pixel ({i},{j}) sees itself or a later pixel"
        assert (grad[:p] > 0).all(), f"pixel ({i},{j}) has a blind spot"


@pytest.mark.parametrize("out_per_colour", [1, 4])
def test_in_colour_each_subpixel_sees_earlier_pixels_and_the_earlier_colours_of_its_own(out_per_colour):
    # R before G before B (van den Oord et al. 2016): the output of colour g at pixel p depends on every colour of
    # every earlier pixel and on the colours < g of pixel p, and on nothing else
    torch.manual_seed(2)
    net = GatedPixelCNN(3, 3 * out_per_colour, channels=12, layers=4, kernel=3, head_channels=24, colours=3).double()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    h = w = 5
    x = torch.randn(16, 3, h, w, dtype=torch.float64, requires_grad=True)  # no path is dead (ReLU) for all 16
    out = net(x)
    for i, j, g in itertools.product(range(h), range(w), range(3)):
        channels = [v * 3 + g for v in range(out_per_colour)]  # channel-minor: output v * C + c is colour c
        (grad,) = torch.autograd.grad(out[:, channels, i, j].sum(), x, retain_graph=True)
        grad = grad.abs().sum(0).permute(1, 2, 0).flatten()  # raster order of pixels, colours within a pixel
        p = (i * w + j) * 3 + g
        assert grad[p:].max() == 0, f"colour {g} of pixel ({i},{j}) sees itself or something after it"
        assert (grad[:p] > 0).all(), f"colour {g} of pixel ({i},{j}) has a blind spot"
    row = net.row(x[:, :, 2:3].detach(), net.context(x[:, :, :2].detach(), w))
    torch.testing.assert_close(row, out[:, :, 2:3].detach(), rtol=0, atol=1e-12)


def test_a_colour_pixelcnn_is_normalised_and_samples_rgb():
    # a 1 x 1 colour image with 4 levels would need another head; with 256 levels, check the chain rule instead:
    # log P(x) = sum over subpixels of log P(x_c | earlier), so changing B changes only B's term
    torch.manual_seed(3)
    model = PixelCNN(PixelCNNConfig(head="softmax", channels=6, layers=2, head_channels=6), (3, 2, 2)).double()
    x = torch.randint(0, 256, (1, 3, 2, 2)).double()
    logits = model.logits(x)  # [1 x 256 x 3 x 2 x 2]
    x2 = x.clone()
    x2[0, 2, 1, 1] = (x2[0, 2, 1, 1] + 7) % 256  # the very last subpixel
    torch.testing.assert_close(model.logits(x2), logits)  # no conditional sees it
    images = model.sample(2, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 2, 2) and torch.equal(images * 255, (images * 255).round())
    with pytest.raises(ConfigError, match="Bernoulli-head PixelCNN models binarised grey images"):
        PixelCNN(PixelCNNConfig(), (3, 8, 8))


def test_row_by_row_evaluation_equals_the_full_pass():
    net = GatedPixelCNN(1, 3, channels=8, layers=4, kernel=5, head_channels=16).double()
    x = torch.randn(2, 1, 9, 7, dtype=torch.float64)
    full = net(x)
    for i in range(9):
        row = net.row(x[:, :, i:i + 1], net.context(x[:, :, :i], 7))
        torch.testing.assert_close(row, full[:, :, i:i + 1], rtol=0, atol=1e-12)


def test_bernoulli_head_is_normalised_over_all_binary_images():
    model = tiny("bernoulli", (1, 2, 2))
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).reshape(16, 1, 2, 2)
    total = torch.logsumexp(model.log_prob(images), 0)
    assert abs(total.item()) < 1e-12


def test_softmax_head_is_normalised_over_all_8bit_images():
    model = tiny("softmax", (1, 1, 2))
    v = torch.arange(256, dtype=torch.float64)
    images = torch.cartesian_prod(v, v).reshape(-1, 1, 1, 2)  # all 65,536 two-pixel images
    total = torch.logsumexp(model.log_prob(images), 0)
    assert abs(total.item()) < 1e-10


def assert_frequencies_match(samples: torch.Tensor, p: torch.Tensor) -> None:
    """The 2 x 2 binary samples [n x 1 x 2 x 2], coded 0..15 in raster order, each code's frequency within 5 standard
    errors of its probability p[code]."""
    n = len(samples)
    codes = (samples.reshape(n, 4) * torch.tensor([8.0, 4.0, 2.0, 1.0])).sum(1).long()
    freq = torch.bincount(codes, minlength=16).double() / n
    se = (p * (1 - p) / n).sqrt()
    assert torch.all((freq - p).abs() <= 5 * se + 1e-9), (freq, p)


def test_samples_follow_the_density():
    torch.manual_seed(0)
    model = tiny("bernoulli", (1, 2, 2)).float()
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).reshape(16, 1, 2, 2)
    p = model.log_prob(images).exp().double()
    n = 40000
    g = torch.Generator().manual_seed(0)
    assert_frequencies_match(model.sample(n, g), p)


def test_completion_keeps_the_given_rows_and_is_seeded():
    model = tiny("softmax", (1, 6, 5)).float()
    x = torch.randint(0, 256, (1, 6, 5)).float()
    a = model.complete(x, 3, given_rows=2, generator=torch.Generator().manual_seed(4))
    b = model.complete(x, 3, given_rows=2, generator=torch.Generator().manual_seed(4))
    assert a.shape == (3, 1, 6, 5)
    torch.testing.assert_close(a[:, :, :2], (x[None, :, :2] / 255).expand(3, 1, 2, 5))
    assert torch.equal(a, b)
    assert not torch.equal(a[0, :, 2:], a[1, :, 2:])  # the completions differ where they are drawn


def test_temperature_near_zero_is_greedy():
    model = tiny("bernoulli", (1, 3, 3)).float()
    s = model.sample(4, torch.Generator().manual_seed(0), temperature=1e-6)
    assert torch.equal(s, s[:1].expand_as(s))  # every sample is the same argmax chain
    with pytest.raises(ConfigError, match="temperature"):
        model.sample(1, temperature=0.0)


def test_values_the_head_cannot_score_are_refused():
    binary = tiny("bernoulli", (1, 2, 2))
    with pytest.raises(ConfigError, match="binary images"):
        binary.log_prob(torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64))
    with pytest.raises(ConfigError, match="binary images"):
        binary.log_prob(torch.full((1, 1, 2, 2), 3.0, dtype=torch.float64))
    with pytest.raises(ConfigError, match="models 1x2x2 images"):
        binary.log_prob(torch.zeros((1, 1, 3, 3), dtype=torch.float64))
    assert tiny("softmax").view == "uint8" and binary.view == "binary"


# --- class labels (the conditional gated PixelCNN) -------------------------------------------------------------
def test_a_label_reaches_every_pixel_and_the_raster_order_still_holds():
    torch.manual_seed(4)
    net = GatedPixelCNN(1, 1, channels=8, layers=3, kernel=3, head_channels=16, num_classes=3).double()
    x0 = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(net(x0, torch.tensor([0, 2])), net(x0), rtol=0, atol=0)  # built: labels not yet felt
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    h = w = 5
    x = torch.randn(1, 1, h, w, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1])
    out = net(x, y)
    for i, j in itertools.product(range(h), range(w)):
        (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
        grad = grad.abs().flatten()
        assert grad[i * w + j:].max() == 0, f"pixel ({i},{j}) sees itself or a later pixel"
    others = [net(x, torch.tensor([c])) for c in (0, 2, 3)]  # 3: "no label"
    for other in others:  # the label moves every conditional, the first pixel's (which sees no pixel) included
        assert ((other - out).abs().flatten() > 1e-6).all()
    for i in range(h):  # row by row with the label, as sampling runs it
        row = net.row(x[:, :, i:i + 1].detach(), net.context(x[:, :, :i].detach(), w, y), y)
        torch.testing.assert_close(row, out[:, :, i:i + 1].detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(net(x), others[-1])  # no labels given: "no label"
    with pytest.raises(ValueError, match="without classes"):
        GatedPixelCNN(1, 1, channels=8, layers=2, num_classes=0)(x, y)


def test_each_class_conditional_is_normalised_and_the_loss_drops_labels_at_p_uncond():
    model = tiny("bernoulli", (1, 2, 2), class_cond=True, num_classes=3)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).reshape(16, 1, 2, 2)
    for c in range(4):  # the three classes and "no label"
        total = torch.logsumexp(model.log_prob(images, torch.full((16,), c)), 0)
        assert abs(total.item()) < 1e-12
    y = torch.tensor([0, 1, 2, 0] * 4)
    conditional, unconditional = -model.log_prob(images, y), -model.log_prob(images)
    assert (conditional - unconditional).abs().min() > 1e-6
    model.cfg.p_uncond = 0.0
    torch.testing.assert_close(model.loss(images, y), conditional, rtol=0, atol=0)
    model.cfg.p_uncond = 1.0
    torch.testing.assert_close(model.loss(images, y), unconditional, rtol=0, atol=0)
    metrics = model.validation_metrics(images, y)
    torch.testing.assert_close(metrics["nll"], unconditional)  # the reported likelihood: the unconditional model
    torch.testing.assert_close(metrics["nll_given_class"], conditional)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_guided_samples_follow_the_guided_conditionals(guidance):
    # each pixel drawn from sigmoid(l_u + w (l_c - l_u)), l_u and l_c the logits of "no label" and of the class
    # given the pixels before it: the probability of a whole 2 x 2 image is the product of those conditionals
    torch.manual_seed(0)
    model = tiny("bernoulli", (1, 2, 2), class_cond=True, num_classes=3).float()
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).reshape(16, 1, 2, 2)
    y = torch.full((16,), 2)
    with torch.no_grad():
        logits = model.logits(images) + guidance * (model.logits(images, y) - model.logits(images))
    p = torch.distributions.Bernoulli(logits=logits.double()).log_prob(images.double()).sum((1, 2, 3)).exp()
    assert abs(p.sum().item() - 1) < 1e-6
    n = 40000
    assert_frequencies_match(model.sample(n, torch.Generator().manual_seed(1), y=torch.full((n,), 2),
                                          guidance=guidance), p)


def test_guidance_zero_draws_the_unconditional_model_and_labels_need_a_class_conditional_run():
    model = tiny("bernoulli", (1, 3, 3), class_cond=True, num_classes=3).float()
    y = torch.arange(64) % 3
    plain = model.sample(64, torch.Generator().manual_seed(5))
    unguided = model.sample(64, torch.Generator().manual_seed(5), y=y, guidance=0.0)
    assert torch.equal(plain, unguided)
    assert not torch.equal(plain, model.sample(64, torch.Generator().manual_seed(5), y=y))
    x = torch.randint(0, 2, (1, 3, 3)).float()
    done = model.complete(x, 3, given_rows=1, generator=torch.Generator().manual_seed(5), y=torch.tensor([2, 2, 2]),
                          guidance=2.0)
    torch.testing.assert_close(done[:, :, :1], x[None, :, :1].expand(3, 1, 1, 3))
    with pytest.raises(ConfigError, match="--class must be between 0 and 2"):
        model.sample(1, y=torch.tensor([3]))
    with pytest.raises(ConfigError, match="not trained with --class-cond"):
        tiny("bernoulli", (1, 2, 2)).sample(1, y=torch.tensor([0]))
    assert not any("label" in k for k in tiny("bernoulli", (1, 2, 2)).state_dict())  # old runs load unchanged
