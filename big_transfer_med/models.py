"""The models, by name (get_model): BiT ResNet-v2 ('R50x1': pre-activation,
GroupNorm, weight-standardised convolutions) and torchvision's ResNet
('resnet50': v1.5, BatchNorm), the family of the self-supervised ImageNet
checkpoints.

BiT numerics follow the public BiT weights, which differ from Flax defaults in ways
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


def _standardize(kernel, eps):
  """(standardised kernel, residuals for the gradient), over (n, out)."""
  w = kernel.reshape(-1, kernel.shape[-1])
  centred = w - jnp.mean(w, axis=0, keepdims=True)
  inv_std = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=0,
                                   keepdims=True) + eps)
  standardized = centred * inv_std
  return standardized.reshape(kernel.shape), (standardized, inv_std)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def standardize_weight(kernel, eps=1e-10):
  """Weight standardisation per output channel over all other axes (HWIO).

  Its gradient is written out, (g - mean(g) - w * mean(g w)) / std per output
  channel: the one autodiff derives has the same value but XLA:CPU runs
  its reductions several times slower (tested against autodiff).
  """
  return _standardize(kernel, eps)[0]


def _standardize_bwd(eps, residuals, grad):
  del eps
  standardized, inv_std = residuals
  g = grad.reshape(standardized.shape)
  dw = inv_std * (g - jnp.mean(g, axis=0, keepdims=True) - standardized *
                  jnp.mean(g * standardized, axis=0, keepdims=True))
  return (dw.reshape(grad.shape),)


standardize_weight.defvjp(_standardize, _standardize_bwd)


# config.model.conv_lowering: how convolutions are computed. 'native' is
# XLA's convolution; 'matmul' computes each one as a matrix product over
# (im2col) patches; 'auto' picks 'matmul' on the CPU and 'native' elsewhere.
CONV_LOWERINGS = ("auto", "native", "matmul")
# config.model.remat: which activations the backward pass recomputes.
REMATS = ("none", "unit")


def resolve_conv_lowering(lowering: str) -> str:
  """'auto' -> 'matmul' on XLA:CPU, whose convolution kernels (above all the
  kernel gradient, lowered to a batch-as-feature convolution, and 3x3
  convolutions on few pixels and many channels) run at a fraction of its
  matrix-product rate; GPUs and TPUs keep XLA's native convolutions."""
  if lowering not in CONV_LOWERINGS:
    raise errors.ConfigError(f"config.model.conv_lowering={lowering!r}: "
                             f"expected one of {CONV_LOWERINGS}.")
  if lowering == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "native"
  return lowering


def matmul_conv(inputs, kernel, strides, padding):
  """A VALID or explicitly padded convolution (HWIO kernel, no dilation or
  groups) as one matrix product over im2col patches; its gradients are
  matrix products and slices too. Equal to lax.conv_general_dilated."""
  kh, kw, cin, cout = kernel.shape
  if padding != "VALID":
    inputs = jnp.pad(inputs, ((0, 0), tuple(padding[0]), tuple(padding[1]),
                              (0, 0)))
  sh, sw = strides
  out_h = (inputs.shape[1] - kh) // sh + 1
  out_w = (inputs.shape[2] - kw) // sw + 1
  if (kh, kw) == (1, 1):
    patches = inputs[:, :sh * (out_h - 1) + 1:sh, :sw * (out_w - 1) + 1:sw]
  else:  # Channels ordered (row, column, input channel) as in the kernel.
    patches = jnp.concatenate(
        [inputs[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
         for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout))


class Conv(nn.Conv):
  """nn.Conv that, with `lowering='matmul'` (CONV_LOWERINGS), runs as
  matmul_conv: same parameters and result (tested), computed by XLA:CPU
  2-10x faster."""
  lowering: str = "auto"

  @nn.compact
  def __call__(self, inputs):
    if (resolve_conv_lowering(self.lowering) == "native" or self.use_bias
        or self.feature_group_count != 1
        or self.kernel_dilation not in (None, 1, (1, 1))
        or not (self.padding == "VALID" or isinstance(self.padding, tuple))):
      return super().__call__(inputs)
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, inputs.shape[-1], self.features),
                        self.param_dtype)
    stride = self.strides or 1
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    inputs, kernel = nn.dtypes.promote_dtype(inputs, kernel, dtype=self.dtype)
    return matmul_conv(inputs, kernel, strides, self.padding)


class StdConv(Conv):
  """Convolution whose kernel is weight-standardised before use."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return standardize_weight(value) if name == "kernel" else value


def zero_pad_max_pool(x):
  """BiT root pooling: zero-pad by 1, then 3x3 stride-2 VALID max-pool."""
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class BottleneckUnit(nn.Module):
  """Pre-activation bottleneck; the projection takes the pre-activated input."""
  features: int  # Output channels (4x the bottleneck width).
  strides: int = 1
  dtype: Optional[jnp.dtype] = None
  conv_lowering: str = "auto"  # CONV_LOWERINGS.

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(StdConv, use_bias=False, dtype=self.dtype,
                             lowering=self.conv_lowering)
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
HEAD_INITS = ("zeros", "pytorch", "normal")


def _head_initializers(head_init: str, fan_in: int):
  """(kernel_init, bias_init) of the classifier. 'zeros' is BiT's: training
  starts from a uniform prediction and the pre-trained features are not
  disturbed. 'pytorch' is what a freshly built torch.nn.Conv2d / Linear
  gets (the seed's fine-tuning): kaiming_uniform(a=sqrt(5)) weights and
  biases, both U(-1/sqrt(fan_in), 1/sqrt(fan_in)). 'normal' is the
  benchmark paper's (Hosseinzadeh Taher et al.) new head: N(0, 0.01)
  weights, zero bias."""
  if head_init == "zeros":
    return nn.initializers.zeros, nn.initializers.zeros
  if head_init == "normal":
    return nn.initializers.normal(0.01), nn.initializers.zeros
  if head_init != "pytorch":
    raise errors.ConfigError(f"config.model.head_init={head_init!r}: "
                             f"expected one of {HEAD_INITS}.")
  bound = 1.0 / fan_in**0.5
  return (nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform"),
          lambda key, shape, dtype=jnp.float32: jax.random.uniform(
              key, shape, dtype, -bound, bound))


def _outputs(model, skips, x, train: bool, pre_logits: bool,
             feature_map: bool = False):
  """What either ResNet returns from its last stage's features `x` (and the
  earlier stages' `skips`, strides 2-16): a U-Net's per-pixel logits if it
  has a decoder, else with `feature_map` the float32 map [B, h, w, C] the
  head pools (class activation maps: saliency.py), else the pooled float32
  features (`pre_logits` or no head), else the dense head's float32
  logits."""
  if model.decoder_widths:
    return _segmentation_logits(model, skips, x, train)
  if feature_map:
    return x.astype(jnp.float32)
  features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
  if pre_logits or not model.num_classes:
    return features
  kernel_init, bias_init = _head_initializers(model.head_init,
                                              features.shape[-1])
  return nn.Dense(model.num_classes, kernel_init=kernel_init,
                  bias_init=bias_init, dtype=jnp.float32,
                  name="head")(features)


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
  conv_lowering: str = "auto"  # CONV_LOWERINGS.
  remat: str = "none"  # REMATS.
  # Non-empty: a U-Net (segmentation) with decoder blocks of these widths.
  decoder_widths: Sequence[int] = ()
  bn_axis_name: Optional[str] = None  # The decoder's BatchNorm.

  @nn.compact
  def __call__(self, images, *, pre_logits: bool = False,
               feature_map: bool = False, train: bool = False):
    # `train` is part of every model's interface (the trainer passes True in
    # its step, evaluators False); BiT's encoder computes the same either
    # way (no BatchNorm, no dropout); a U-Net decoder's BatchNorm uses it.
    w = 64 * self.width
    x = jnp.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
    x = StdConv(w, (7, 7), strides=2, padding="VALID", use_bias=False,
                dtype=self.dtype, lowering=self.conv_lowering,
                name="root_block")(x)
    skips = [x]  # Strides 2, 4, 8, 16: the U-Net decoder's inputs.
    x = zero_pad_max_pool(x)
    # nn.remat keeps the parameter names: checkpoints load either way.
    unit_module = (nn.remat(BottleneckUnit) if self.remat == "unit"
                   else BottleneckUnit)
    for stage, depth in enumerate(self.depths):
      for unit in range(depth):
        x = unit_module(
            features=4 * w * 2**stage,
            strides=2 if (stage > 0 and unit == 0) else 1,
            dtype=self.dtype, conv_lowering=self.conv_lowering,
            name=f"block{stage + 1}_unit{unit + 1:02d}")(x)
      skips.append(x)
    x = nn.relu(GroupNorm(dtype=self.dtype, name="norm_pre_head")(x))
    return _outputs(self, skips[:-1], x, train, pre_logits, feature_map)


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d (eps 1e-5, momentum 0.1) over NHWC, synchronised:
  with `axis_name`, the batch statistics are those of the whole global
  batch (every device of every host). Written out rather than nn.BatchNorm
  because PyTorch's running variance takes the unbiased batch variance
  (n / (n - 1)), which checkpoints trained either way should agree on.
  Statistics are computed in float32 whatever the compute dtype."""
  momentum: float = 0.1
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  dtype: Optional[jnp.dtype] = None
  scale_init: nn.initializers.Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x, train: bool):
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    running_mean = self.variable("batch_stats", "mean", jnp.zeros,
                                 (features,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,),
                                jnp.float32)
    if train:
      x32 = x.astype(jnp.float32)
      count = x.size // features
      mean = jnp.mean(x32, axis=(0, 1, 2))
      if self.axis_name:  # Equal shares: the mean of means is the mean.
        mean = jax.lax.pmean(mean, self.axis_name)
        count *= jax.lax.psum(1, self.axis_name)
      var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))  # Two-pass.
      if self.axis_name:
        var = jax.lax.pmean(var, self.axis_name)
      if not self.is_initializing():
        m = self.momentum
        running_mean.value = (1 - m) * running_mean.value + m * mean
        running_var.value = ((1 - m) * running_var.value
                             + m * var * count / max(count - 1, 1))
    else:
      mean, var = running_mean.value, running_var.value
    y = (x.astype(jnp.float32) - mean) * (
        jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype or x.dtype)


# torchvision's convolution initialisation: kaiming_normal_(fan_out, relu).
_TORCH_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out",
                                                   "normal")  # Untruncated.


class ResidualBlock(nn.Module):
  """torchvision's BasicBlock (`bottleneck=False`: two 3x3 convolutions) or
  Bottleneck (1x1, 3x3 with the stride ("v1.5"), 1x1 to 4x); the shortcut
  is a strided 1x1 convolution + BatchNorm where the shape changes."""
  planes: int  # torchvision's `planes`: the stage's base width.
  bottleneck: bool
  strides: int = 1
  mid_width: int = 0  # Bottleneck: the 3x3 convolution's width.
  train: bool = False
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.1
  dtype: Optional[jnp.dtype] = None
  conv_lowering: str = "auto"

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype,
                             lowering=self.conv_lowering,
                             kernel_init=_TORCH_CONV_INIT)
    norm = lambda name: functools.partial(  # noqa: E731
        BatchNorm(momentum=self.bn_momentum, axis_name=self.bn_axis_name,
                  dtype=self.dtype, name=name),
        train=self.train)
    same = ((1, 1), (1, 1))
    if self.bottleneck:
      out = 4 * self.planes
      y = nn.relu(norm("bn1")(conv(self.mid_width, (1, 1), padding="VALID",
                                   name="conv1")(x)))
      y = nn.relu(norm("bn2")(conv(self.mid_width, (3, 3), self.strides,
                                   padding=same, name="conv2")(y)))
      y = norm("bn3")(conv(out, (1, 1), padding="VALID", name="conv3")(y))
    else:
      out = self.planes
      y = nn.relu(norm("bn1")(conv(out, (3, 3), self.strides, padding=same,
                                   name="conv1")(x)))
      y = norm("bn2")(conv(out, (3, 3), padding=same, name="conv2")(y))
    if self.strides != 1 or x.shape[-1] != out:
      x = norm("downsample_bn")(conv(out, (1, 1), self.strides,
                                     padding="VALID",
                                     name="downsample_conv")(x))
    return nn.relu(y + x)


class ResNetV1(nn.Module):
  """torchvision's ResNet (v1.5) in NHWC; parameter names mirror its state
  dict (conv1, bn1, layer1_0/conv1, ..., head = fc). BatchNorm uses batch
  statistics (synchronised over `bn_axis_name`) when called with
  train=True and updates the running averages in the `batch_stats`
  collection; evaluation uses the running averages."""
  depths: Sequence[int]
  bottleneck: bool = True
  base_width: int = 64  # Stem and first stage's planes (SimCLR's x2: 128).
  bottleneck_multiplier: int = 1  # Wide ResNets' 3x3 width: 2.
  num_classes: Optional[int] = None
  dtype: Optional[jnp.dtype] = None
  head_init: str = "zeros"  # HEAD_INITS.
  conv_lowering: str = "auto"  # CONV_LOWERINGS.
  remat: str = "none"  # REMATS.
  bn_axis_name: Optional[str] = None
  # 1.0 makes the running averages the last batch's statistics (what
  # train_state.reestimate_batch_stats averages).
  bn_momentum: float = 0.1
  # Non-empty: a U-Net (segmentation) with decoder blocks of these widths.
  decoder_widths: Sequence[int] = ()

  @nn.compact
  def __call__(self, images, *, pre_logits: bool = False,
               feature_map: bool = False, train: bool = False):
    x = Conv(self.base_width, (7, 7), strides=2, padding=((3, 3), (3, 3)),
             use_bias=False, dtype=self.dtype, lowering=self.conv_lowering,
             kernel_init=_TORCH_CONV_INIT, name="conv1")(images)
    x = nn.relu(BatchNorm(momentum=self.bn_momentum,
                          axis_name=self.bn_axis_name, dtype=self.dtype,
                          name="bn1")(x, train))
    skips = [x]  # Strides 2, 4, 8, 16: the U-Net decoder's inputs.
    # PyTorch's max-pool pads with -inf, as Flax's does.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block = nn.remat(ResidualBlock) if self.remat == "unit" else ResidualBlock
    for stage, depth in enumerate(self.depths):
      planes = self.base_width * 2**stage
      for unit in range(depth):
        x = block(planes=planes, bottleneck=self.bottleneck,
                  strides=2 if (stage > 0 and unit == 0) else 1,
                  mid_width=planes * self.bottleneck_multiplier, train=train,
                  bn_axis_name=self.bn_axis_name,
                  bn_momentum=self.bn_momentum, dtype=self.dtype,
                  conv_lowering=self.conv_lowering,
                  name=f"layer{stage + 1}_{unit}")(x)
      skips.append(x)
    return _outputs(self, skips[:-1], x, train, pre_logits, feature_map)


TASKS = ("classification", "segmentation")  # config.task.
# smp's Unet decoder widths, from the deepest block to the full resolution.
UNET_DECODER_WIDTHS = (256, 128, 64, 32, 16)


class UNetDecoder(nn.Module):
  """U-Net decoder (as segmentation_models_pytorch's Unet): each block
  upsamples by 2 (nearest), concatenates the encoder's features of that
  stride (none at full resolution) and applies two 3x3 convolution +
  BatchNorm + ReLU."""
  widths: Sequence[int]
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.1
  dtype: Optional[jnp.dtype] = None
  conv_lowering: str = "auto"

  @nn.compact
  def __call__(self, deepest, skips, train: bool):
    x = deepest
    for i, width in enumerate(self.widths):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      if i < len(skips):
        skip = skips[-1 - i]
        if skip.shape[1:3] != x.shape[1:3]:
          raise errors.ConfigError(
              f"config.data.resolution: a U-Net needs images whose sides are "
              f"multiples of {2 ** len(self.widths)} (the encoder's features "
              f"of {skip.shape[1:3]} meet upsampled ones of {x.shape[1:3]}).")
        x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      for j in (1, 2):
        x = Conv(width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                 dtype=self.dtype, lowering=self.conv_lowering,
                 kernel_init=_TORCH_CONV_INIT, name=f"block{i + 1}_conv{j}")(x)
        x = nn.relu(BatchNorm(momentum=self.bn_momentum,
                              axis_name=self.bn_axis_name, dtype=self.dtype,
                              name=f"block{i + 1}_bn{j}")(x, train))
    return x


def _segmentation_logits(model, skips, deepest, train: bool):
  """Per-pixel float32 logits [N, H, W, num_classes] of an encoder's stage
  features: the UNetDecoder ('decoder/...') and a 3x3 convolution ('head',
  PyTorch's default initialisation as smp's)."""
  x = UNetDecoder(model.decoder_widths, bn_axis_name=model.bn_axis_name,
                  bn_momentum=getattr(model, "bn_momentum", 0.1),
                  dtype=model.dtype, conv_lowering=model.conv_lowering,
                  name="decoder")(deepest, skips, train)
  kernel_init, bias_init = _head_initializers("pytorch", 9 * x.shape[-1])
  return nn.Conv(model.num_classes, (3, 3), padding=((1, 1), (1, 1)),
                 kernel_init=kernel_init, bias_init=bias_init,
                 dtype=jnp.float32, name="head")(x.astype(jnp.float32))


# torchvision-family names -> ResNetV1 settings (torchvision's resnet18 ...
# wide_resnet101_2, and SimCLR's width multiples resnet50x2 / x4).
RESNET_V1 = {
    "resnet18": dict(depths=(2, 2, 2, 2), bottleneck=False),
    "resnet34": dict(depths=(3, 4, 6, 3), bottleneck=False),
    "resnet50": dict(depths=(3, 4, 6, 3)),
    "resnet101": dict(depths=(3, 4, 23, 3)),
    "resnet152": dict(depths=(3, 8, 36, 3)),
    "wide_resnet50_2": dict(depths=(3, 4, 6, 3), bottleneck_multiplier=2),
    "wide_resnet101_2": dict(depths=(3, 4, 23, 3), bottleneck_multiplier=2),
    "resnet50x2": dict(depths=(3, 4, 6, 3), base_width=128),
    "resnet50x4": dict(depths=(3, 4, 6, 3), base_width=256),
}
MODEL_NAMES_HELP = (f"R<depth>x<width> (BiT) with depth in {sorted(DEPTHS)} "
                    f"and width in {list(WIDTHS)}, e.g. 'R50x1', or one of "
                    f"{list(RESNET_V1)}")


def uses_batch_norm(name: str) -> bool:
  """Whether model `name` has BatchNorm (state that training updates)."""
  return name in RESNET_V1


def parse_name(name: str):
  """'R50x1' -> (depth 50, width 1); raises ConfigError for unknown names."""
  match = _NAME_RE.match(name or "")
  if (not match or int(match.group(1)) not in DEPTHS
      or int(match.group(2)) not in WIDTHS):
    raise errors.ConfigError(
        f"Unknown model name {name!r}: expected {MODEL_NAMES_HELP}.")
  return int(match.group(1)), int(match.group(2))


def check_name(name: str) -> None:
  """Raises ConfigError unless `name` is a model get_model builds."""
  if name not in RESNET_V1:
    parse_name(name)


def get_model(name: str, num_classes: Optional[int],
              precision: str = "float32", head_init: str = "zeros",
              conv_lowering: str = "auto", remat: str = "none",
              bn_axis_name: Optional[str] = None,
              task: str = "classification") -> nn.Module:
  """Returns model `name`: a BiT ResNet-v2 ('R26x1' ... 'R152x4') or a
  torchvision ResNet (RESNET_V1), with a head initialised as `head_init`
  (HEAD_INITS), computing in `precision` (a key of PRECISIONS,
  config.model.precision), its convolutions lowered as `conv_lowering`
  (CONV_LOWERINGS), rematerialising as `remat` (REMATS). BatchNorm models
  synchronise their batch statistics over the device axis `bn_axis_name`
  (the trainer's; None outside a per-device function). With
  task='segmentation' (TASKS) the model is a U-Net on that encoder
  (UNetDecoder), returning per-pixel logits; its encoder's parameters keep
  the classifier's names, so classifier checkpoints load into it."""
  check_name(name)
  if task not in TASKS:
    raise errors.ConfigError(f"config.task={task!r}: expected one of {TASKS}.")
  decoder = UNET_DECODER_WIDTHS if task == "segmentation" else ()
  if precision not in PRECISIONS:
    raise errors.ConfigError(
        f"config.model.precision={precision!r} is not one of "
        f"{sorted(PRECISIONS)}.")
  resolve_conv_lowering(conv_lowering)  # Fails fast on a bad name.
  if remat not in REMATS:
    raise errors.ConfigError(
        f"config.model.remat={remat!r}: expected one of {REMATS}.")
  if name in RESNET_V1:
    return ResNetV1(**RESNET_V1[name], num_classes=num_classes,
                    dtype=PRECISIONS[precision], head_init=head_init,
                    conv_lowering=conv_lowering, remat=remat,
                    bn_axis_name=bn_axis_name, decoder_widths=decoder)
  depth, width = parse_name(name)
  return ResNetV2(depths=DEPTHS[depth], width=width, num_classes=num_classes,
                  dtype=PRECISIONS[precision], head_init=head_init,
                  conv_lowering=conv_lowering, remat=remat,
                  decoder_widths=decoder, bn_axis_name=bn_axis_name)


def from_config(model_config, num_classes: Optional[int],
                bn_axis_name: Optional[str] = None,
                task: str = "classification") -> nn.Module:
  """get_model for config.model (name, precision, head_init, conv_lowering,
  remat) and config.task."""
  return get_model(model_config.name, num_classes, model_config.precision,
                   model_config.head_init, model_config.conv_lowering,
                   # Absent from runs written before the key existed.
                   model_config.get("remat", "none"), bn_axis_name, task)
