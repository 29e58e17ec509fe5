"""Independent float64 NumPy reference of BiT ResNet-v2 (written from the paper's
description, not from our Flax code), used to check the model's numerics."""
import numpy as np


def group_norm(x, gamma, beta, groups=32, eps=1e-5):
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  g = (g - mean) / np.sqrt(var + eps)
  return g.reshape(n, h, w, c) * gamma + beta


def standardize(kernel, eps=1e-10):
  mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
  var = ((kernel - mean) ** 2).mean(axis=(0, 1, 2), keepdims=True)
  return (kernel - mean) / np.sqrt(var + eps)


def conv(x, kernel, stride=1, pad=0):
  """Cross-correlation, symmetric zero padding, HWIO kernel."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, _, cout = kernel.shape
  n, h, w, _ = x.shape
  oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
  out = np.zeros((n, oh, ow, cout))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
      out += patch @ kernel[i, j]
  return out


def std_conv(x, kernel, stride=1, pad=0):
  return conv(x, standardize(kernel), stride, pad)


def max_pool_zero_pad(x):
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  n, h, w, c = x.shape
  oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
  out = np.full((n, oh, ow, c), -np.inf)
  for i in range(3):
    for j in range(3):
      out = np.maximum(out, x[:, i:i + 2 * oh:2, j:j + 2 * ow:2, :])
  return out


def relu(x):
  return np.maximum(x, 0)


def forward(params, images, depths):
  """Logits of BiT ResNet-v2 with `params` in our tree layout."""
  p = {k: v for k, v in params.items()}
  x = std_conv(images, p["root_block"]["kernel"], stride=2, pad=3)
  x = max_pool_zero_pad(x)
  for stage, depth in enumerate(depths):
    for unit in range(depth):
      u = p[f"block{stage + 1}_unit{unit + 1:02d}"]
      stride = 2 if stage > 0 and unit == 0 else 1
      pre = relu(group_norm(x, u["gn1"]["scale"], u["gn1"]["bias"]))
      shortcut = (std_conv(pre, u["conv_proj"]["kernel"], stride)
                  if "conv_proj" in u else x)
      y = std_conv(pre, u["conv1"]["kernel"])
      y = relu(group_norm(y, u["gn2"]["scale"], u["gn2"]["bias"]))
      y = std_conv(y, u["conv2"]["kernel"], stride, pad=1)
      y = relu(group_norm(y, u["gn3"]["scale"], u["gn3"]["bias"]))
      x = std_conv(y, u["conv3"]["kernel"]) + shortcut
  x = relu(group_norm(x, p["norm_pre_head"]["scale"], p["norm_pre_head"]["bias"]))
  features = x.mean(axis=(1, 2))
  return features @ p["head"]["kernel"] + p["head"]["bias"], features
