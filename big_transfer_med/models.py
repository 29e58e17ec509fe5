"""BiT ResNet-v2 (pre-activation, GroupNorm, weight-standardised convolutions).

Numerics follow the public BiT weights, which differ from Flax defaults in ways
that change outputs:
  * GroupNorm uses 32 groups, eps 1e-5 and the two-pass variance mean((x-mu)^2).
  * Convolution kernels are standardised per output channel over (H, W, in)
    with eps 1e-10.
  * Every strided/3x3 convolution pads explicitly and symmetrically, then runs
    VALID ('SAME' pads asymmetrically at stride 2).
  * The root max-pool pads with zeros, not -inf.
"""
import functools
import re
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from input_pipeline import errors

DEPTHS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
WIDTHS = (1, 2, 3, 4)
_NAME_RE = re.compile(r"^R(\d+)x(\d+)$")
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

GroupNorm = functools.partial(nn.GroupNorm, num_groups=32, epsilon=1e-5,
                              use_fast_variance=False)


def standardize_weight(kernel, eps=1e-10):
  """Weight standardisation per output channel over all other axes (HWIO)."""
  axes = tuple(range(kernel.ndim - 1))
  kernel = kernel - jnp.mean(kernel, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(kernel), axis=axes, keepdims=True)
  return kernel / jnp.sqrt(var + eps)


class StdConv(nn.Conv):
  """Convolution whose kernel is weight-standardised before use.

  1x1 convolutions (strided or not) run as a matrix product over the
  (subsampled) pixels: same parameters and result, but XLA:CPU computes the
  product and its two gradients 2-6x faster than the equivalent convolution,
  whose kernel gradient it lowers to a slow batch-as-feature convolution.
  """

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return standardize_weight(value) if name == "kernel" else value

  @nn.compact
  def __call__(self, inputs):
    if (tuple(self.kernel_size) != (1, 1) or self.use_bias
        or self.padding != "VALID" or self.feature_group_count != 1
        or self.kernel_dilation not in (None, 1, (1, 1))):
      return super().__call__(inputs)
    kernel = self.param("kernel", self.kernel_init,
                        (1, 1, inputs.shape[-1], self.features),
                        self.param_dtype)
    stride = self.strides or 1
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    inputs = inputs[..., ::sh, ::sw, :]
    inputs, kernel = nn.dtypes.promote_dtype(inputs, kernel, dtype=self.dtype)
    return jnp.dot(inputs, kernel[0, 0], precision=self.precision)


def zero_pad_max_pool(x):
  """BiT root pooling: zero-pad by 1, then 3x3 stride-2 VALID max-pool."""
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class BottleneckUnit(nn.Module):
  """Pre-activation bottleneck; the projection takes the pre-activated input."""
  features: int  # Output channels (4x the bottleneck width).
  strides: int = 1
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(StdConv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(GroupNorm, dtype=self.dtype)
    mid = self.features // 4
    x_pre = nn.relu(norm(name="gn1")(x))
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, (1, 1), strides=self.strides,
                      padding="VALID", name="conv_proj")(x_pre)
    else:
      shortcut = x
    y = conv(mid, (1, 1), padding="VALID", name="conv1")(x_pre)
    y = nn.relu(norm(name="gn2")(y))
    y = conv(mid, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)),
             name="conv2")(y)
    y = nn.relu(norm(name="gn3")(y))
    y = conv(self.features, (1, 1), padding="VALID", name="conv3")(y)
    return y + shortcut


# config.model.head_init: how a new classifier starts.
HEAD_INITS = ("zeros", "pytorch")


def _head_initializers(head_init: str, fan_in: int):
  """(kernel_init, bias_init) of the classifier. 'zeros' is BiT's: training
  starts from a uniform prediction and the pre-trained features are not
  disturbed. 'pytorch' is what a freshly built torch.nn.Conv2d / Linear
  gets (the seed's fine-tuning): kaiming_uniform(a=sqrt(5)) weights and
  biases, both U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  if head_init == "zeros":
    return nn.initializers.zeros, nn.initializers.zeros
  if head_init != "pytorch":
    raise errors.ConfigError(f"config.model.head_init={head_init!r}: "
                             f"expected one of {HEAD_INITS}.")
  bound = 1.0 / fan_in**0.5
  return (nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform"),
          lambda key, shape, dtype=jnp.float32: jax.random.uniform(
              key, shape, dtype, -bound, bound))


class ResNetV2(nn.Module):
  """BiT ResNet-v2. Returns logits, or pre-logit features if `pre_logits`.

  With `num_classes=None` the module has no head and always returns features.
  `dtype` is the compute dtype; parameters stay float32 (param_dtype) and the
  outputs are float32 whatever it is, so losses and metrics are float32.
  """
  depths: Sequence[int]
  width: int = 1
  num_classes: Optional[int] = None
  dtype: Optional[jnp.dtype] = None
  head_init: str = "zeros"  # HEAD_INITS.

  @nn.compact
  def __call__(self, images, *, pre_logits: bool = False,
               train: bool = False):
    # `train` is part of every model's interface (the trainer passes True in
    # its step, evaluators False); BiT computes the same either way: no
    # BatchNorm, no dropout.
    del train
    w = 64 * self.width
    x = jnp.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
    x = StdConv(w, (7, 7), strides=2, padding="VALID", use_bias=False,
                dtype=self.dtype, name="root_block")(x)
    x = zero_pad_max_pool(x)
    for stage, depth in enumerate(self.depths):
      for unit in range(depth):
        x = BottleneckUnit(
            features=4 * w * 2**stage,
            strides=2 if (stage > 0 and unit == 0) else 1,
            dtype=self.dtype,
            name=f"block{stage + 1}_unit{unit + 1:02d}")(x)
    x = nn.relu(GroupNorm(dtype=self.dtype, name="norm_pre_head")(x))
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if pre_logits or not self.num_classes:
      return features
    kernel_init, bias_init = _head_initializers(self.head_init,
                                                features.shape[-1])
    return nn.Dense(self.num_classes, kernel_init=kernel_init,
                    bias_init=bias_init, dtype=jnp.float32,
                    name="head")(features)


def parse_name(name: str):
  """'R50x1' -> (depth 50, width 1); raises ConfigError for unknown names."""
  match = _NAME_RE.match(name)
  if (not match or int(match.group(1)) not in DEPTHS
      or int(match.group(2)) not in WIDTHS):
    raise errors.ConfigError(
        f"Unknown model name {name!r}: expected R<depth>x<width> with depth in "
        f"{sorted(DEPTHS)} and width in {list(WIDTHS)}, e.g. 'R50x1'.")
  return int(match.group(1)), int(match.group(2))


def get_model(name: str, num_classes: Optional[int],
              precision: str = "float32", head_init: str = "zeros"
              ) -> ResNetV2:
  """Returns the BiT ResNet-v2 `name` ('R26x1' ... 'R152x4') with a head
  initialised as `head_init` (HEAD_INITS), computing in `precision` (a key
  of PRECISIONS, config.model.precision)."""
  depth, width = parse_name(name)
  if precision not in PRECISIONS:
    raise errors.ConfigError(
        f"config.model.precision={precision!r} is not one of "
        f"{sorted(PRECISIONS)}.")
  return ResNetV2(depths=DEPTHS[depth], width=width, num_classes=num_classes,
                  dtype=PRECISIONS[precision], head_init=head_init)
