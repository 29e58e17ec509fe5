"""BiT ResNet-v2: parameter counts, API, and numerics against float64 NumPy."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_transfer_med import models
from input_pipeline import errors
from tests import numpy_bit


def _count(name, num_classes, channels=3):
  model = models.get_model(name, num_classes)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 64, 64, channels)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def _expected_count(depths, width, num_classes, channels=3):
  """Parameter count from the architecture's definition."""
  w = 64 * width
  total = 7 * 7 * channels * w
  cin = w
  for stage, depth in enumerate(depths):
    cout, mid = 4 * w * 2**stage, w * 2**stage
    for unit in range(depth):
      total += 2 * cin + 2 * mid + 2 * mid  # Three GroupNorms (scale, bias).
      total += cin * mid + 9 * mid * mid + mid * cout
      if unit == 0:
        total += cin * cout  # Projection.
      cin = cout
  total += 2 * cin + cin * num_classes + num_classes
  return total


def test_r50x1_imagenet_parameter_count():
  assert _count("R50x1", 1000) == 25_549_352


@pytest.mark.parametrize("name", ["R26x1", "R50x3", "R101x1", "R152x4"])
def test_parameter_counts_match_architecture(name):
  depth, width = models.parse_name(name)
  assert _count(name, 10) == _expected_count(models.DEPTHS[depth], width, 10)


@pytest.mark.parametrize("bad", ["R18x1", "R50x5", "resnet51", "R50"])
def test_unknown_model_name_is_a_clear_error(bad):
  with pytest.raises(errors.ConfigError, match="R<depth>x<width>"):
    models.get_model(bad, 10)


@pytest.mark.slow
def test_logits_features_and_zero_head():
  model = models.get_model("R26x1", 7)
  images = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 3), minval=-1)
  params = model.init(jax.random.PRNGKey(0), images)["params"]
  logits = model.apply({"params": params}, images)
  features = model.apply({"params": params}, images, pre_logits=True)
  assert logits.shape == (3, 7) and features.shape == (3, 2048)
  np.testing.assert_array_equal(logits, 0.0)  # Zero-initialised head.
  assert float(jnp.std(features)) > 0
  headless = models.get_model("R26x1", None)
  np.testing.assert_array_equal(
      headless.apply({"params": {k: v for k, v in params.items()
                                 if k != "head"}}, images), features)


def _random_params(model, shape, seed):
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros(shape))["params"]
  # Randomise every tensor (head and GroupNorm affine included) so that
  # nothing is trivially zero or one.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  leaves = [jax.random.normal(k, x.shape) * (0.5 if x.ndim == 1 else 1.0) +
            (1.0 if x.ndim == 1 else 0.0) for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(tree, leaves)


def _relative_error(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) /
               np.linalg.norm(b))


@pytest.mark.slow
@pytest.mark.parametrize("lowering", ["native", "matmul"])
def test_full_network_matches_float64_numpy_reference(lowering):
  model = models.get_model("R26x1", 5, conv_lowering=lowering)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 40, 40, 3))
  params = _random_params(model, images.shape, seed=3)
  logits = model.apply({"params": params}, jnp.asarray(images, jnp.float32))
  features = model.apply({"params": params}, jnp.asarray(images, jnp.float32),
                         pre_logits=True)
  ref_params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  ref_logits, ref_features = numpy_bit.forward(ref_params, images,
                                               models.DEPTHS[26])
  assert _relative_error(features, ref_features) < 1e-4
  assert _relative_error(logits, ref_logits) < 1e-4


def test_group_norm_is_two_pass_eps_1e5():
  # A large mean makes one-pass (E[x^2] - E[x]^2) variance inaccurate in float32.
  x = np.random.default_rng(0).normal(300.0, 0.05, (2, 4, 4, 64))
  x = x.astype(np.float32).astype(np.float64)  # Same input on both sides.
  gamma = np.random.default_rng(1).normal(size=64)
  beta = np.random.default_rng(2).normal(size=64)
  gn = models.GroupNorm()
  out = gn.apply({"params": {"scale": gamma, "bias": beta}},
                 jnp.asarray(x, jnp.float32))
  ref = numpy_bit.group_norm(x, gamma, beta)
  assert _relative_error(out, ref) < 1e-3
  flax_default = nn.GroupNorm(num_groups=32).apply(
      {"params": {"scale": gamma, "bias": beta}}, jnp.asarray(x, jnp.float32))
  assert _relative_error(flax_default, ref) > 10 * _relative_error(out, ref)


def test_std_conv_stride2_symmetric_padding_matches_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 10, 8))
  kernel = rng.normal(size=(3, 3, 8, 16)) * 3 + 1
  conv = models.StdConv(16, (3, 3), strides=2, padding=((1, 1), (1, 1)),
                        use_bias=False)
  out = conv.apply({"params": {"kernel": jnp.asarray(kernel, jnp.float32)}},
                   jnp.asarray(x, jnp.float32))
  ref = numpy_bit.std_conv(x, kernel, stride=2, pad=1)
  assert out.shape == ref.shape
  assert _relative_error(out, ref) < 1e-5
  same = models.StdConv(16, (3, 3), strides=2, padding="SAME", use_bias=False)
  out_same = same.apply({"params": {"kernel": jnp.asarray(kernel, jnp.float32)}},
                        jnp.asarray(x, jnp.float32))
  assert _relative_error(out_same, ref) > 0.1  # 'SAME' pads asymmetrically.


def test_root_max_pool_pads_with_zeros():
  x = -np.abs(np.random.default_rng(0).normal(size=(1, 6, 6, 2))) - 1.0
  out = models.zero_pad_max_pool(jnp.asarray(x, jnp.float32))
  ref = numpy_bit.max_pool_zero_pad(x)
  np.testing.assert_allclose(out, ref, rtol=1e-6)
  assert float(out[0, 0, 0, 0]) == 0.0  # The pad wins over negative inputs.


@pytest.mark.parametrize("lowering", ["native", "matmul"])
@pytest.mark.parametrize("size,stride,pad", [
    (1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (7, 2, 0)])
def test_std_conv_lowerings_match_xla_convolution_and_gradients(
    lowering, size, stride, pad):
  # Both lowerings (matrix products over patches on the CPU, XLA's
  # convolution on GPU/TPU): value and both gradients must match XLA's
  # convolution of the standardised kernel at full precision.
  rng = np.random.default_rng(size * 10 + stride)
  x = jnp.asarray(rng.normal(size=(2, 11, 9, 8)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(size, size, 8, 16)) * 2 + 1,
                       jnp.float32)
  padding = ((pad, pad), (pad, pad)) if pad else "VALID"
  conv = models.StdConv(16, (size, size), strides=stride, padding=padding,
                        use_bias=False, lowering=lowering)

  def ours(x, kernel):
    return conv.apply({"params": {"kernel": kernel}}, x)

  def reference(x, kernel):
    return jax.lax.conv_general_dilated(
        x, models.standardize_weight(kernel), (stride, stride), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)

  out, ref = ours(x, kernel), reference(x, kernel)
  assert out.shape == ref.shape == (
      2, (11 + 2 * pad - size) // stride + 1, (9 + 2 * pad - size) // stride + 1,
      16)
  assert _relative_error(out, np.asarray(ref, np.float64)) < 1e-5
  cotangent = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  grads = jax.vjp(ours, x, kernel)[1](cotangent)
  ref_grads = jax.vjp(reference, x, kernel)[1](cotangent)
  for g, r in zip(grads, ref_grads):
    assert _relative_error(g, np.asarray(r, np.float64)) < 1e-5


@pytest.mark.parametrize("shape", [(3, 3, 8, 16), (1, 1, 32, 64), (7, 7, 3, 8)])
def test_weight_standardisation_gradient_is_the_autodiff_gradient(shape):
  # The written-out gradient against autodiff of the textbook formula.
  def textbook(kernel):
    axes = tuple(range(kernel.ndim - 1))
    centred = kernel - jnp.mean(kernel, axis=axes, keepdims=True)
    return centred / jnp.sqrt(jnp.mean(jnp.square(centred), axis=axes,
                                       keepdims=True) + 1e-10)

  rng = np.random.default_rng(len(shape) + shape[0])
  kernel = jnp.asarray(rng.normal(size=shape) * 3 + 1, jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=shape), jnp.float32)
  out, vjp = jax.vjp(models.standardize_weight, kernel)
  ref_out, ref_vjp = jax.vjp(textbook, kernel)
  assert _relative_error(out, np.asarray(ref_out, np.float64)) < 1e-6
  assert _relative_error(vjp(cotangent)[0],
                         np.asarray(ref_vjp(cotangent)[0], np.float64)) < 1e-5


def test_auto_lowering_is_matmul_on_cpu_and_native_elsewhere(monkeypatch):
  assert models.resolve_conv_lowering("auto") == "matmul"  # Tests: CPU.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert models.resolve_conv_lowering("auto") == "native"
  assert models.resolve_conv_lowering("matmul") == "matmul"
  with pytest.raises(errors.ConfigError, match="conv_lowering='im2row'"):
    models.get_model("R26x1", 5, conv_lowering="im2row")


@pytest.mark.slow
def test_whole_network_gradients_agree_between_lowerings():
  """The trainer's gradients (loss through GroupNorm, weight standardisation
  and every convolution) are the same whichever lowering computes them.
  Compared in float64: in float32 the lowerings' different summation orders
  can flip a ReLU or a max-pool choice on a near-tie (R26 at 36 px has 3x3
  maps in stage 3), which moves the gradients of all layers below by ~1%
  (seen on one CPU type, not on another)."""
  images = np.random.default_rng(0).uniform(-1, 1, (4, 36, 36, 3))
  labels = np.eye(5)[np.arange(4)]
  params = _random_params(models.get_model("R26x1", 5), images.shape, seed=5)
  grads = {}
  with jax.enable_x64(True):
    for lowering in ("native", "matmul"):
      model = models.ResNetV2(depths=models.DEPTHS[26], num_classes=5,
                              dtype=jnp.float64, conv_lowering=lowering)

      def loss(params, model=model):
        logits = model.apply({"params": params}, jnp.asarray(images))
        return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))

      grads[lowering] = jax.grad(loss)(
          jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params))
  flat_native = dict(jax.tree_util.tree_leaves_with_path(grads["native"]))
  for path, g in jax.tree_util.tree_leaves_with_path(grads["matmul"]):
    assert g.dtype == jnp.float64
    assert _relative_error(g, np.asarray(flat_native[path])) < 1e-10, (
        jax.tree_util.keystr(path))


@pytest.mark.slow
def test_remat_per_unit_keeps_names_values_and_gradients():
  """model.remat='unit' recomputes each unit's activations in the backward
  pass: same parameter tree (checkpoints load either way), same loss and
  gradients; and the compiled gradient does recompute (more convolution
  products than without)."""
  images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 1)),
                       jnp.float32)
  plain = models.get_model("R26x1", 5)
  remat = models.get_model("R26x1", 5, remat="unit")
  params = _random_params(plain, images.shape, seed=3)
  assert (jax.tree.structure(remat.init(jax.random.PRNGKey(0), images))
          == jax.tree.structure({"params": params}))

  def loss_and_grads(model):
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(
        model.apply({"params": p}, images) ** 2)))
  ref_loss, ref_grads = loss_and_grads(plain)(params)
  our_loss, our_grads = loss_and_grads(remat)(params)
  np.testing.assert_allclose(our_loss, ref_loss, rtol=1e-6)
  flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref_grads))
  for path, g in jax.tree_util.tree_leaves_with_path(our_grads):
    assert _relative_error(g, np.asarray(flat_ref[path], np.float64)) < 1e-6, (
        jax.tree_util.keystr(path))
  products = lambda model: loss_and_grads(model).lower(params).as_text().count(  # noqa: E731
      "dot_general")
  assert products(remat) > products(plain)


def test_unknown_remat_is_a_clear_error():
  with pytest.raises(errors.ConfigError, match="config.model.remat='layer'"):
    models.get_model("R26x1", 5, remat="layer")


@pytest.mark.slow
@pytest.mark.parametrize("lowering,product", [("native", "convolution"),
                                              ("matmul", "dot_general")])
def test_bfloat16_precision_computes_in_bf16_with_float32_params_and_outputs(
    lowering, product):
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)),
                       jnp.float32)
  fp32 = models.get_model("R26x1", 5, conv_lowering=lowering)
  bf16 = models.get_model("R26x1", 5, precision="bfloat16",
                          conv_lowering=lowering)
  params = _random_params(fp32, images.shape, seed=4)
  # Same parameter tree, created in float32 (the master weights).
  shapes = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), images)["params"]
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  ref = fp32.apply({"params": params}, images)
  out = bf16.apply({"params": params}, images)
  assert out.dtype == jnp.float32
  assert 1e-4 < _relative_error(out, np.asarray(ref, np.float64)) < 5e-2
  hlo = jax.jit(lambda p: bf16.apply({"params": p}, images)).lower(
      params).as_text()
  # The convolutions' products take bf16 operands.
  assert re.search(rf"stablehlo.{product}.*tensor<[0-9x]+bf16>", hlo)
  with pytest.raises(errors.ConfigError, match="config.model.precision"):
    models.get_model("R26x1", 5, precision="float16")


@pytest.mark.slow
def test_pytorch_head_init_is_torch_default_conv_init():
  """head_init='pytorch' (the seed's fresh nn.Conv2d head): weights and bias
  uniform in +-1/sqrt(fan_in) (kaiming_uniform with a=sqrt(5): gain
  sqrt(1/3) times sqrt(3 / fan_in)), the body unchanged."""
  images = jnp.zeros((1, 32, 32, 3))
  zero = models.get_model("R26x1", 400).init(jax.random.key(0), images)
  torch_like = models.get_model("R26x1", 400, head_init="pytorch").init(
      jax.random.key(0), images)
  bound = 1 / np.sqrt(2048)
  for name in ("kernel", "bias"):
    value = np.asarray(torch_like["params"]["head"][name])
    assert np.abs(value).max() <= bound
    assert np.abs(value).max() > 0.99 * bound  # Fills the interval...
    np.testing.assert_allclose(value.std(), bound / np.sqrt(3), rtol=0.05)
    assert not np.asarray(zero["params"]["head"][name]).any()
  jax.tree.map(np.testing.assert_array_equal,
               zero["params"]["block1_unit01"],
               torch_like["params"]["block1_unit01"])
  # 'normal': the benchmark paper's N(0, 0.01) weights and zero bias.
  normal = models.get_model("R26x1", 400, head_init="normal").init(
      jax.random.key(0), images)["params"]["head"]
  np.testing.assert_allclose(np.asarray(normal["kernel"]).std(), 0.01,
                             rtol=0.05)
  assert not np.asarray(normal["bias"]).any()
  with pytest.raises(errors.ConfigError, match="head_init"):
    models.get_model("R26x1", 4, head_init="uniform").init(
        jax.random.key(0), images)
