"""The gated PixelCNN network (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

``GatedPixelCNN(x)`` maps an image [N x C x H x W] to per-pixel outputs [N x out_channels x H x W] such that
the output at pixel (i, j) depends only on the input pixels before (i, j) in raster order: rows above, and the
pixels to the left in row i. It knows nothing of the distribution its outputs parameterise.

Two stacks remove the blind spot of the original masked-convolution PixelCNN:

* the vertical stack sees every pixel in the rows above, through (k//2 + 1) x k convolutions padded so that
  output row i sees input rows i - k//2 .. i; it is shifted down one row before feeding the horizontal stack,
  so that stack only ever receives rows < i from it;
* the horizontal stack sees row i, through 1 x (k//2 + 1) convolutions padded on the left: in the first
  layer (mask type A) the result is shifted right one column so pixel j does not see itself; later layers
  (type B) may see column j, which by then only carries information from pixels before it.

Each layer is gated, tanh(a) * sigmoid(b), and the horizontal stack is residual after the first layer.

Colour (``colours`` = C > 1): the subpixels of a pixel are predicted in order too, R before G before B
(van den Oord et al. 2016, "Pixel Recurrent Neural Networks", section 3.4). Every feature map of the horizontal
stack and the head is split into C groups; at column j the first layer's horizontal convolution lets group g see
the input colours < g of pixel j (mask A), and every later connection within a pixel lets group g see groups
<= g (mask B). The output channel of colour c belongs to group c. The vertical stack carries only rows above the
pixel to the horizontal one, so it needs no colour mask. With C = 1 the network is the grey one unchanged.

Class labels (``num_classes`` > 0): each layer adds a learned vector of its label to the pre-activations of both
stacks (the conditional gated PixelCNN, van den Oord et al. 2016, eq. 4: tanh(W_f * x + V_f^T h) ...). A label
is global, so it may reach every pixel, the first included. The label index num_classes means "no label".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _shift_down(x: torch.Tensor) -> torch.Tensor:
    """Row i takes the values of row i - 1; row 0 becomes zero. [N x C x H x W] -> same."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def _shift_right(x: torch.Tensor) -> torch.Tensor:
    """Column j takes the values of column j - 1; column 0 becomes zero."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def colour_groups(n: int, colours: int) -> torch.Tensor:
    """The colour group (0..colours-1) of each of n channels, in contiguous blocks as equal as they can be."""
    return torch.arange(n) * colours // n


def colour_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, strict: bool) -> torch.Tensor:
    """[out x in] 1 where an output channel may see an input channel of the same pixel: input group < output group
    (strict: mask A), or <= (mask B)."""
    return (in_groups[None, :] < out_groups[:, None]) if strict else (in_groups[None, :] <= out_groups[:, None])


def _label_table(num_classes: int, width: int) -> nn.Embedding | None:
    """A vector of ``width`` per label and one for "no label" (None without classes), zero at first: training starts
    from the unconditional network. (Embedding's N(0, 1) start put a random unit bias on every gate: after 300 steps
    the conditional NLL was 2 nats worse than no label's.)"""
    if not num_classes:
        return None
    table = nn.Embedding(num_classes + 1, width)
    nn.init.zeros_(table.weight)
    return table


def _conv(conv: nn.Conv2d, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """conv(x) with its weight multiplied by ``mask`` (None: the plain convolution)."""
    return conv(x) if mask is None else F.conv2d(x, conv.weight * mask, conv.bias)


class GatedLayer(nn.Module):
    def __init__(self, cin: int, channels: int, kernel: int, first: bool, colours: int = 1,
                 in_groups: torch.Tensor | None = None, num_classes: int = 0):
        super().__init__()
        if kernel % 2 == 0 or kernel < 3:
            raise ValueError(f"the PixelCNN kernel size must be odd and at least 3; got {kernel}")
        self.first, self.k, self.colours = first, kernel // 2, colours
        self.v_conv = nn.Conv2d(cin, 2 * channels, (self.k + 1, kernel))  # rows i-k..i, columns j-k..j+k
        self.h_conv = nn.Conv2d(cin, 2 * channels, (1, self.k + 1))  # columns j-k..j of row i
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        # V_f^T h and V_g^T h of both stacks
        self.v_label, self.h_label = _label_table(num_classes, 2 * channels), _label_table(num_classes, 2 * channels)
        if colours > 1:  # masks as buffers outside the state dict: a colour net saves the same tensors as a grey one
            groups = colour_groups(channels, colours)
            gated = torch.cat([groups, groups])  # the a and b halves of the gate, each in colour blocks
            in_groups = colour_groups(cin, colours) if in_groups is None else in_groups
            h_mask = torch.ones(2 * channels, cin, 1, self.k + 1)
            h_mask[:, :, 0, -1] = colour_mask(gated, in_groups, strict=first).float()  # column j: within the pixel
            self.register_buffer("h_mask", h_mask, persistent=False)
            self.register_buffer("out_mask", colour_mask(groups, groups, False).float()[:, :, None, None],
                                 persistent=False)
        else:
            self.h_mask = self.out_mask = None

    @staticmethod
    def gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    @staticmethod
    def _with_label(pre: torch.Tensor, table: nn.Embedding | None, y: torch.Tensor | None) -> torch.Tensor:
        return pre if table is None else pre + table(y)[:, :, None, None].to(pre.dtype)  # (N, 2c, 1, 1)

    def vertical(self, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-activation of the vertical stack, [N x 2c x H x W]: output row i sees input rows i-k..i."""
        return self._with_label(self.v_conv(F.pad(v, (self.k, self.k, self.k, 0))), self.v_label, y)

    def horizontal(self, h: torch.Tensor, v_above: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The next horizontal stack from this one and the vertical pre-activation of the row above each row."""
        h_pre = _conv(self.h_conv, F.pad(h, (self.k, 0, 0, 0)), self.h_mask)  # columns <= j
        if self.first and self.colours == 1:
            h_pre = _shift_right(h_pre)  # mask A: columns < j (in colour, h_mask hides what pixel j must not see)
        h_pre = self._with_label(h_pre + self.v_to_h(v_above), self.h_label, y)
        h_new = _conv(self.h_out, self.gate(h_pre), self.out_mask)
        return h_new if self.first else h + h_new

    def forward(self, v: torch.Tensor, h: torch.Tensor,
                y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        v_pre = self.vertical(v, y)  # rows <= i
        return self.gate(v_pre), self.horizontal(h, _shift_down(v_pre), y)  # the horizontal stack gets rows < i only


class GatedPixelCNN(nn.Module):
    """[N x in_channels x H x W] (and labels [N] when ``num_classes`` > 0) -> [N x out_channels x H x W],
    autoregressive in raster order."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = 64, layers: int = 8, kernel: int = 5,
                 head_channels: int = 256, channels_last: bool = True, colours: int = 1, num_classes: int = 0):
        super().__init__()
        if colours > 1 and min(channels, head_channels) < colours:
            raise ValueError(f"a colour PixelCNN needs at least {colours} channels per layer")
        pixel_in = torch.arange(in_channels) % colours if colours > 1 else None  # input channel c is colour c
        self.layers = nn.ModuleList(  # 7x7 first layer, as in the paper
            [GatedLayer(in_channels, channels, max(7, kernel), first=True, colours=colours, in_groups=pixel_in,
                        num_classes=num_classes)]
            + [GatedLayer(channels, channels, kernel, first=False, colours=colours, num_classes=num_classes)
               for _ in range(layers - 1)])
        self.num_classes = num_classes
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, head_channels, 1), nn.ReLU(),
                                  nn.Conv2d(head_channels, out_channels, 1))
        self.colours = colours
        if colours > 1:  # output channel v * C + c (channel-minor, as the model lays out its logits) is colour c
            hidden, head = colour_groups(channels, colours), colour_groups(head_channels, colours)
            out = torch.arange(out_channels) % colours
            self.register_buffer("head_mask1", colour_mask(head, hidden, False).float()[:, :, None, None],
                                 persistent=False)
            self.register_buffer("head_mask2", colour_mask(out, head, False).float()[:, :, None, None],
                                 persistent=False)
        self.channels_last = channels_last  # the faster memory layout for convolutions on CPUs
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        if self.colours == 1:
            return self.head(h)
        h = _conv(self.head[1], F.relu(h), self.head_mask1)
        return _conv(self.head[3], F.relu(h), self.head_mask2)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _labels(self, y: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        """Labels [N] for the layers: None without classes; "no label" (num_classes) where none is given."""
        if not self.num_classes:
            if y is not None:
                raise ValueError("this PixelCNN was built without classes (num_classes = 0); it takes no labels")
            return None
        if y is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        assert y.shape == (n,), f"labels of shape {tuple(y.shape)} for {n} images"
        return y

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self._layout(x)
        y = self._labels(y, len(x), x.device)
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h, y)
        return self._head(h)

    # --- row by row, for sampling: the vertical stack once per row, the horizontal stack once per pixel --------
    def context(self, above: torch.Tensor, width: int, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """What row i receives from the rows above it, above = x[:, :, :i]: per layer, the vertical
        pre-activation of row i - 1 ([N x 2c x 1 x W]; zeros for the first row)."""
        layer0 = self.layers[0]
        if above.shape[2] == 0:
            zeros = above.new_zeros((above.shape[0], layer0.v_conv.out_channels, 1, width))
            return [zeros] * len(self.layers)
        ctx, v = [], self._layout(above)
        y = self._labels(y, len(above), above.device)
        for layer in self.layers:
            v_pre = layer.vertical(v, y)
            ctx.append(v_pre[:, :, -1:])
            v = layer.gate(v_pre)
        return ctx

    def row(self, x_row: torch.Tensor, context: list[torch.Tensor], y: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs of row i [N x out x 1 x W] from that row x[:, :, i:i+1] and ``context(x[:, :, :i], W, y)``;
        equal to forward(x, y)[:, :, i:i+1]."""
        h = self._layout(x_row)
        y = self._labels(y, len(x_row), x_row.device)
        for layer, v_above in zip(self.layers, context):
            h = layer.horizontal(h, v_above, y)
        return self._head(h)
